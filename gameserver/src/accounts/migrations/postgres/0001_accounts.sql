-- 0001: accounts, guest devices, platform users, player data.
-- Player ids come from an identity sequence: never reused, even after a
-- delete or a rolled-back insert.
CREATE TABLE accounts (
    player        BIGINT   GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name          TEXT     NOT NULL,
    -- Lowercased name of a password account (NULL for the other kinds):
    -- unique among password accounts only.
    name_key      TEXT     UNIQUE,
    kind          SMALLINT NOT NULL,
    password_hash TEXT,
    created_ms    BIGINT   NOT NULL
);
CREATE TABLE guests (
    device TEXT   PRIMARY KEY,
    player BIGINT NOT NULL REFERENCES accounts(player)
);
CREATE TABLE platform_users (
    platform TEXT   NOT NULL,
    user_id  TEXT   NOT NULL,
    player        BIGINT  NOT NULL REFERENCES accounts(player),
    PRIMARY KEY (platform, user_id)
);
-- No foreign key to accounts: room servers also save players whose tokens
-- were minted directly (bots, benches) and have no account row.
CREATE TABLE player_data (
    player        BIGINT  PRIMARY KEY,
    games         BIGINT  NOT NULL DEFAULT 0,
    wins          BIGINT  NOT NULL DEFAULT 0,
    losses        BIGINT  NOT NULL DEFAULT 0,
    draws         BIGINT  NOT NULL DEFAULT 0,
    rating        BIGINT  NOT NULL DEFAULT 1200,
    coins         BIGINT  NOT NULL DEFAULT 1000,
    moves         BIGINT  NOT NULL DEFAULT 0,
    auto_moves    BIGINT  NOT NULL DEFAULT 0,
    chat_lines    BIGINT  NOT NULL DEFAULT 0,
    rooms_entered BIGINT  NOT NULL DEFAULT 0,
    last_seen_ms  BIGINT  NOT NULL DEFAULT 0
);
