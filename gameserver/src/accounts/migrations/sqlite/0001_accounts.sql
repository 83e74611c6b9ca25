-- 0001: accounts, guest devices, platform users, player data.
-- Player ids come from AUTOINCREMENT: never reused, even after a delete or a
-- rolled-back insert.
CREATE TABLE accounts (
    player        INTEGER PRIMARY KEY AUTOINCREMENT,
    name          TEXT    NOT NULL,
    -- Lowercased name of a password account (NULL for the other kinds):
    -- unique among password accounts only.
    name_key      TEXT    UNIQUE,
    kind          INTEGER NOT NULL,
    password_hash TEXT,
    created_ms    INTEGER NOT NULL
);
CREATE TABLE guests (
    device TEXT    PRIMARY KEY,
    player INTEGER NOT NULL REFERENCES accounts(player)
);
CREATE TABLE platform_users (
    platform TEXT    NOT NULL,
    user_id  TEXT    NOT NULL,
    player        INTEGER NOT NULL REFERENCES accounts(player),
    PRIMARY KEY (platform, user_id)
);
-- No foreign key to accounts: room servers also save players whose tokens
-- were minted directly (bots, benches) and have no account row.
CREATE TABLE player_data (
    player        INTEGER PRIMARY KEY,
    games         INTEGER NOT NULL DEFAULT 0,
    wins          INTEGER NOT NULL DEFAULT 0,
    losses        INTEGER NOT NULL DEFAULT 0,
    draws         INTEGER NOT NULL DEFAULT 0,
    rating        INTEGER NOT NULL DEFAULT 1200,
    coins         INTEGER NOT NULL DEFAULT 1000,
    moves         INTEGER NOT NULL DEFAULT 0,
    auto_moves    INTEGER NOT NULL DEFAULT 0,
    chat_lines    INTEGER NOT NULL DEFAULT 0,
    rooms_entered INTEGER NOT NULL DEFAULT 0,
    last_seen_ms  INTEGER NOT NULL DEFAULT 0
);
