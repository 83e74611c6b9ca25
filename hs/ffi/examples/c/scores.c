/*
 * scores: a tiny game-state store (player id -> score) kept hot by hs.
 *
 * Run the same program twice, as the preferred master and as its standby:
 *
 *   scores master DIR LISTEN PEER      e.g. scores master /tmp/a 127.0.0.1:7000 127.0.0.1:7001
 *   scores slave  DIR LISTEN PEER      e.g. scores slave  /tmp/b 127.0.0.1:7001 127.0.0.1:7000
 *
 * Both listen, so either can serve; PEER "-" starts a lone master. When the
 * master's process dies the slave promotes at once and serves the same scores.
 *
 * Build (from the workspace root, after `cargo build --release -p hs-ffi`):
 *   cc -Ihs/ffi/include hs/ffi/examples/c/scores.c -Ltarget/release -lhs \
 *      -Wl,-rpath,$PWD/target/release -o scores
 *   cc -Ihs/ffi/include hs/ffi/examples/c/scores.c target/release/libhs.a -lpthread -ldl -lm -o scores
 *
 * Commands on stdin, one a line; each answers one line on stdout:
 *   put ID SCORE    -> OK <pos>                    (master only)
 *   del ID          -> OK <pos>                    (master only)
 *   wait POS LEVEL  -> OK                          LEVEL: async|received|flushed|applied
 *   get ID          -> SCORE <id> <score> | NONE <id>
 *   state           -> STATE <players> <digest>
 *   role            -> ROLE <master|slave|candidate> <writable 0|1> <epoch>
 *   stats           -> STATS role=... epoch=... written=... applied=... acked_applied=...
 *   switchover MS   -> OK
 *   quit (or EOF)   -> DONE <players> <digest>, then exit 0 after hs_node_free
 * A failed command answers ERR <HS_STATUS_...> <message>.
 * Printed on its own: LISTEN <addr> once started, and EVENT lines from the
 * event thread (EVENT role_changed <role> <epoch>, EVENT rolled_back <from> <to>,
 * EVENT <kind> ...).
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hs.h"

#define PLAYERS_MAX 4096

/* The game state. The master changes it from the command loop (main thread);
 * the slave's apply / reset / restore callbacks change it on hs's "hs-io"
 * thread; so a mutex guards it. */
static struct {
    pthread_mutex_t lock;
    int present[PLAYERS_MAX];
    int64_t score[PLAYERS_MAX];
} g = {.lock = PTHREAD_MUTEX_INITIALIZER};

/* Lines come from the main thread and the event thread: one writer at a time. */
static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;

static void say(const char *fmt, ...) {
    va_list ap;
    pthread_mutex_lock(&out_lock);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
    fflush(stdout);
    pthread_mutex_unlock(&out_lock);
}

static const char *role_name(uint32_t r) {
    switch (r) {
    case HS_ROLE_MASTER: return "master";
    case HS_ROLE_SLAVE: return "slave";
    case HS_ROLE_CANDIDATE: return "candidate";
    default: return "unknown";
    }
}

/* "player:<id>" -> id, or -1. The key is NOT NUL-terminated: use its length. */
static long parse_key(const uint8_t *key, size_t len) {
    char buf[32];
    long id;
    if (len < 8 || len >= sizeof buf || memcmp(key, "player:", 7) != 0) return -1;
    memcpy(buf, key, len);
    buf[len] = 0;
    id = strtol(buf + 7, NULL, 10);
    return id >= 0 && id < PLAYERS_MAX ? id : -1;
}

static int64_t parse_value(const uint8_t *v, size_t len) {
    char buf[32];
    if (len >= sizeof buf) len = sizeof buf - 1;
    memcpy(buf, v, len);
    buf[len] = 0;
    return strtoll(buf, NULL, 10);
}

static void set_score(long id, int present, int64_t score) {
    pthread_mutex_lock(&g.lock);
    g.present[id] = present;
    g.score[id] = present ? score : 0;
    pthread_mutex_unlock(&g.lock);
}

/* --- hs callbacks. Data callbacks run on "hs-io" (or inside hs_node_start for
 * the replay); their pointers are valid only during the call. --- */

static void on_apply(void *user, const uint8_t *key, size_t key_len, hs_op op, const uint8_t *value,
                     size_t value_len, uint64_t pos, uint32_t epoch) {
    long id = parse_key(key, key_len);
    (void)user, (void)pos, (void)epoch;
    if (id < 0) return;
    set_score(id, op == HS_OP_PUT, op == HS_OP_PUT ? parse_value(value, value_len) : 0);
}

static void on_reset(void *user) {
    (void)user;
    pthread_mutex_lock(&g.lock);
    memset(g.present, 0, sizeof g.present);
    memset(g.score, 0, sizeof g.score);
    pthread_mutex_unlock(&g.lock);
}

static void on_restore(void *user, const uint8_t *key, size_t key_len, const uint8_t *value, size_t value_len) {
    long id = parse_key(key, key_len);
    (void)user;
    if (id >= 0) set_score(id, 1, parse_value(value, value_len));
}

/* --- Event callbacks run on the handle's "hs-ffi-events" thread. --- */

static void on_role_changed(void *user, hs_role role, uint32_t epoch) {
    (void)user;
    say("EVENT role_changed %s %" PRIu32, role_name(role), epoch);
}

static void on_rolled_back(void *user, uint64_t from, uint64_t to) {
    (void)user;
    say("EVENT rolled_back %" PRIu64 " %" PRIu64, from, to);
}

static void on_event(void *user, const hs_event *ev) {
    static const char *kinds[] = {"?", "role_changed", "rolled_back", "slave_connected", "slave_caught_up",
                                  "slave_lost", "master_connected", "caught_up", "master_lost", "resynced",
                                  "frame_rejected", "lag_over_limit", "other"};
    (void)user;
    if (ev->kind == HS_EVENT_KIND_ROLE_CHANGED || ev->kind == HS_EVENT_KIND_ROLLED_BACK) return; /* above */
    say("EVENT %s pos=%" PRIu64 " addr=%s reason=%s", ev->kind <= 12 ? kinds[ev->kind] : "?", ev->pos,
        ev->addr, ev->reason);
}

/* FNV-1a over the present (id, score) pairs in id order: equal states, equal digests. */
static void digest(int *players, uint64_t *out) {
    uint64_t h = 14695981039346656037ull;
    int n = 0;
    pthread_mutex_lock(&g.lock);
    for (int id = 0; id < PLAYERS_MAX; id++) {
        uint64_t v[2];
        if (!g.present[id]) continue;
        n++;
        v[0] = (uint64_t)id;
        v[1] = (uint64_t)g.score[id];
        for (size_t i = 0; i < sizeof v; i++) h = (h ^ ((const uint8_t *)v)[i]) * 1099511628211ull;
    }
    pthread_mutex_unlock(&g.lock);
    *players = n;
    *out = h;
}

static void fail(hs_status st) {
    char msg[512];
    size_t n;
    if (hs_last_error(msg, sizeof msg, &n) != HS_STATUS_OK) strcpy(msg, "?");
    say("ERR %s %s", hs_status_name(st), msg);
}

static int parse_level(const char *s, uint32_t *out) {
    static const char *names[] = {"async", "received", "flushed", "applied"};
    for (uint32_t i = 0; i < 4; i++)
        if (strcmp(s, names[i]) == 0) return *out = i, 1;
    return 0;
}

int main(int argc, char **argv) {
    hs_config cfg;
    hs_node *node = NULL;
    hs_status st;
    char line[256], addr[HS_ADDR_LEN_MAX];
    size_t addr_len;
    int players;
    uint64_t dig;

    if (argc != 5 || (strcmp(argv[1], "master") != 0 && strcmp(argv[1], "slave") != 0)) {
        fprintf(stderr, "usage: %s master|slave DIR LISTEN PEER   (PEER \"-\": a lone master)\n", argv[0]);
        return 2;
    }
    cfg.struct_size = sizeof cfg; /* lets a newer library know which fields we have */
    if ((st = hs_config_init(&cfg)) != HS_STATUS_OK) {
        fail(st);
        return 1;
    }
    cfg.dir = argv[2];
    cfg.listen = argv[3];
    cfg.peer = strcmp(argv[4], "-") == 0 ? NULL : argv[4];
    cfg.segment_bytes = 1 << 20;
    cfg.record_bytes_max = 4096;
    cfg.heartbeat_interval_ms = 50;
    cfg.heartbeat_dead_ticks = 10;
    cfg.reconnect_backoff_min_ms = 5;
    cfg.reconnect_backoff_max_ms = 100;
    cfg.user = NULL; /* our state is global; a real server would pass its own */
    cfg.apply = on_apply;
    cfg.reset = on_reset;
    cfg.restore = on_restore;
    cfg.role_changed = on_role_changed;
    cfg.rolled_back = on_rolled_back;
    cfg.event = on_event;

    st = hs_node_start(&cfg, strcmp(argv[1], "master") == 0 ? HS_ROLE_MASTER : HS_ROLE_SLAVE, &node);
    if (st != HS_STATUS_OK) {
        fail(st);
        return 1;
    }
    if (hs_node_local_addr(node, addr, sizeof addr, &addr_len) == HS_STATUS_OK) say("LISTEN %s", addr);

    while (fgets(line, sizeof line, stdin)) {
        char cmd[32], a[64], b[64];
        int n = sscanf(line, "%31s %63s %63s", cmd, a, b);
        if (n < 1) continue;
        if (strcmp(cmd, "quit") == 0) break;
        if (strcmp(cmd, "put") == 0 && n == 3) {
            char key[32], value[32];
            long id = strtol(a, NULL, 10);
            long long score = strtoll(b, NULL, 10);
            uint64_t pos;
            if (id < 0 || id >= PLAYERS_MAX) {
                say("ERR bad_id %ld", id);
                continue;
            }
            snprintf(key, sizeof key, "player:%ld", id);
            snprintf(value, sizeof value, "%lld", score);
            st = hs_node_put(node, (const uint8_t *)key, strlen(key), (const uint8_t *)value, strlen(value), &pos);
            if (st != HS_STATUS_OK) {
                fail(st);
                continue;
            }
            set_score(id, 1, score); /* the master applies its own change; hs replicates it */
            say("OK %" PRIu64, pos);
        } else if (strcmp(cmd, "del") == 0 && n == 2) {
            char key[32];
            long id = strtol(a, NULL, 10);
            uint64_t pos;
            if (id < 0 || id >= PLAYERS_MAX) {
                say("ERR bad_id %ld", id);
                continue;
            }
            snprintf(key, sizeof key, "player:%ld", id);
            st = hs_node_delete(node, (const uint8_t *)key, strlen(key), &pos);
            if (st != HS_STATUS_OK) {
                fail(st);
                continue;
            }
            set_score(id, 0, 0);
            say("OK %" PRIu64, pos);
        } else if (strcmp(cmd, "wait") == 0 && n == 3) {
            uint32_t level;
            if (!parse_level(b, &level)) {
                say("ERR bad_level %s", b);
                continue;
            }
            st = hs_node_wait(node, strtoull(a, NULL, 10), level, 10000);
            if (st != HS_STATUS_OK) fail(st);
            else say("OK");
        } else if (strcmp(cmd, "get") == 0 && n == 2) {
            long id = strtol(a, NULL, 10);
            int present = 0;
            int64_t score = 0;
            if (id >= 0 && id < PLAYERS_MAX) {
                pthread_mutex_lock(&g.lock);
                present = g.present[id];
                score = g.score[id];
                pthread_mutex_unlock(&g.lock);
            }
            if (present) say("SCORE %ld %" PRId64, id, score);
            else say("NONE %ld", id);
        } else if (strcmp(cmd, "state") == 0) {
            digest(&players, &dig);
            say("STATE %d %016" PRIx64, players, dig);
        } else if (strcmp(cmd, "role") == 0) {
            hs_role role;
            bool writable;
            hs_stats s;
            s.struct_size = sizeof s;
            if ((st = hs_node_role(node, &role)) != HS_STATUS_OK || (st = hs_node_is_writable(node, &writable)) != HS_STATUS_OK ||
                (st = hs_node_stats(node, &s)) != HS_STATUS_OK) {
                fail(st);
                continue;
            }
            say("ROLE %s %d %" PRIu32, role_name(role), writable ? 1 : 0, s.epoch);
        } else if (strcmp(cmd, "stats") == 0) {
            hs_stats s;
            s.struct_size = sizeof s;
            if ((st = hs_node_stats(node, &s)) != HS_STATUS_OK) {
                fail(st);
                continue;
            }
            say("STATS role=%s epoch=%" PRIu32 " written=%" PRIu64 " applied=%" PRIu64 " acked_applied=%" PRIu64
                " slave_connected=%d",
                role_name(s.role), s.epoch, s.written, s.applied, s.acked_applied, s.slave_connected ? 1 : 0);
        } else if (strcmp(cmd, "switchover") == 0 && n == 2) {
            st = hs_node_switchover(node, strtoull(a, NULL, 10));
            if (st != HS_STATUS_OK) fail(st);
            else say("OK");
        } else {
            say("ERR bad_command %s", cmd);
        }
    }
    hs_node_free(node); /* stops the node: no callback runs after this */
    digest(&players, &dig);
    say("DONE %d %016" PRIx64, players, dig);
    return 0;
}
