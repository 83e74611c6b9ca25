//! Every server process SIGKILLed at once (room-server pairs, gateway):
//! what the database still holds of the players' data, against what the
//! players were shown. A game's records are saved at once (nothing a player
//! saw is lost); activity is saved in batches (at most what came after the
//! last batch is lost).

use gameserver::accounts::{PlayerData, PlayerRecord};
use gameserver::client::Target;
use tools::gscluster::{Cluster, ClusterOpts};

mod common;
use common::*;

/// The room servers' activity batch period in this test, ms.
const BATCH_MS: u64 = 200;

fn cluster(dir: &tempfile::TempDir) -> Cluster {
    let mut o = ClusterOpts::new(dir.path());
    o.pairs = 1;
    o.rooms_per_pair = 2;
    o.tables = 4;
    o.turn_ms = 60_000;
    o.balancer = false;
    o.echo = true;
    o.player_data = true;
    o.activity_save_period_ms = BATCH_MS;
    Cluster::start(o).expect("cluster starts")
}

fn db(dir: &tempfile::TempDir, player: u64) -> PlayerData {
    let url = format!("sqlite:{}", dir.path().join("accounts.db").display());
    let store = gameserver::accounts::open(&url).expect("the cluster's database opens");
    store.load(player).expect("load")
}

/// The records of the last game end `p` saw.
fn last_records(p: &Player) -> Vec<(u64, PlayerRecord)> {
    let g = p.view.finished.back().expect("a game ended in the view");
    let mut v: Vec<_> = g
        .game
        .players
        .iter()
        .map(|id| {
            let m = &p.view.members[id];
            (
                *id,
                PlayerRecord {
                    games: m.games,
                    wins: m.wins,
                    losses: m.losses,
                    draws: m.draws,
                    rating: m.rating,
                    coins: m.coins,
                },
            )
        })
        .collect();
    v.sort_by_key(|r| r.0);
    v
}

#[test]
fn a_sigkill_of_every_server_loses_no_record_a_player_saw_and_at_most_a_batch_of_activity() {
    let dir = tempfile::tempdir().unwrap();
    let mut cl = cluster(&dir);
    let rt = rt();
    let (seen, moves_saved_before, moves_acked) = rt.block_on(async {
        let gw = cl.gateways[0].tcp;
        let mut a = Player::join(&cl, 1, Target::Tcp(gw), 0).await;
        let mut b = Player::join(&cl, 2, Target::Tcp(gw), 1).await;
        // Game 1, then wait (bounded) until a batch has saved its moves:
        // the batches run.
        play_game(&mut a, &mut b, usize::MAX, || {}).await;
        let last = a.acked.last().unwrap().0;
        a.see(last).await;
        b.see(last).await;
        let deadline = std::time::Instant::now() + STEP;
        while db(&dir, 1).activity.moves < 5 {
            assert!(
                std::time::Instant::now() < deadline,
                "the batch saver never saved player 1's 5 moves"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let saved_before = db(&dir, 1).activity.moves;
        // Game 2, played to its end; the kill comes the moment both players
        // have seen it.
        a.c.request(gameserver::proto::msg::Request::Ready { room: ROOM })
            .await
            .unwrap();
        b.c.request(gameserver::proto::msg::Request::Ready { room: ROOM })
            .await
            .unwrap();
        a.acked.clear();
        b.acked.clear();
        play_game(&mut a, &mut b, usize::MAX, || {}).await;
        let last = a.acked.last().unwrap().0;
        a.see(last).await;
        b.see(last).await;
        assert_eq!(a.view.finished.len(), 2);
        (last_records(&a), saved_before, 10u64)
    });
    let killed = cl.kill_all();
    assert!(
        killed.len() >= 5,
        "room nodes, center nodes and the gateway: {killed:?}"
    );
    // Immediate level: the records both players saw are in the database.
    for (p, rec) in &seen {
        assert_eq!(
            db(&dir, *p).record,
            *rec,
            "player {p}'s record after game 2"
        );
    }
    assert_eq!(seen[0].1.games, 2);
    // Batch level: nothing from before the last batch we saw is lost, and
    // at most game 2's moves (those after it) are.
    let moves = db(&dir, 1).activity.moves;
    assert!(
        moves >= moves_saved_before && moves <= moves_acked,
        "player 1's saved moves {moves}: between {moves_saved_before} and {moves_acked}"
    );
    eprintln!(
        "KILLALL records_lost=0 activity_moves_lost={} of {} (batch period {BATCH_MS} ms)",
        moves_acked - moves,
        moves_acked
    );
}
