//! What the game-cluster process tests share: players that join a table,
//! play scripted games and check what they were acknowledged.
#![allow(dead_code)] // each test file uses a part

use std::time::{Duration, Instant};

use gameserver::client::{Client, RoomView, Target};
use gameserver::proto::msg::{Answer, Outcome, Request};
use tools::gscluster::Cluster;

pub const ROOM: u32 = 1;
pub const TABLE: u16 = 0;
/// Whole steps of a test (a move, a failover) must finish within this.
pub const STEP: Duration = Duration::from_secs(20);

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

pub struct Player {
    pub c: Client,
    pub view: RoomView,
    /// Moves this player was acknowledged: (room seq of the reply, move).
    pub acked: Vec<(u64, Vec<u8>)>,
}

impl Player {
    pub async fn join(cl: &Cluster, id: u64, target: Target, seat: u8) -> Player {
        let c = Client::connect(&target, &cl.token(id, &format!("p{id}")))
            .await
            .expect("connect");
        let Answer::Entered(s) = c
            .request(Request::Enter { room: ROOM })
            .await
            .expect("enter")
        else {
            panic!("Enter answered without a snapshot")
        };
        let p = Player {
            c,
            view: RoomView::new(s),
            acked: Vec::new(),
        };
        p.c.request(Request::Sit {
            room: ROOM,
            table: TABLE,
            seat,
        })
        .await
        .expect("sit");
        p
    }

    /// Applies every push that arrived.
    pub fn drain(&mut self) {
        while let Some(push) = self.c.try_next_push() {
            self.view.apply_push(&push);
        }
    }

    /// Waits until the view has seen event `seq`.
    pub async fn see(&mut self, seq: u64) {
        let deadline = Instant::now() + STEP;
        while self.view.seq < seq {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.c.next_push()).await {
                Ok(Some(p)) => {
                    self.view.apply_push(&p);
                }
                _ => panic!(
                    "player {} never saw event {seq} (at {})",
                    self.c.player(),
                    self.view.seq
                ),
            }
        }
    }

    pub async fn play(&mut self, x: u8, y: u8) -> u64 {
        let mv = vec![x, y];
        match self
            .c
            .request(Request::Move {
                room: ROOM,
                table: TABLE,
                mv: mv.clone(),
            })
            .await
        {
            Ok(Answer::Done { seq, .. }) => {
                self.acked.push((seq, mv));
                seq
            }
            other => panic!("move {x},{y} by {}: {other:?}", self.c.player()),
        }
    }
}

/// Black plays (i, 0), white (i, 5): black wins on its fifth move. `fault`
/// runs after move `at` (0-based, counting both players' moves).
pub async fn play_game(a: &mut Player, b: &mut Player, at: usize, mut fault: impl FnMut()) {
    let mut n = 0;
    for i in 0..5u8 {
        let s = a.play(i, 0).await;
        b.see(s).await;
        if n == at {
            fault();
        }
        n += 1;
        if i == 4 {
            break;
        }
        let s = b.play(i, 5).await;
        a.see(s).await;
        if n == at {
            fault();
        }
        n += 1;
    }
}

/// What the pair's master holds for the table's last game: its moves.
pub fn server_moves(cl: &Cluster) -> Vec<Vec<u8>> {
    let rooms = cl.rooms(0).expect("ROOMS from the master");
    let room = rooms
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["room"] == ROOM)
        .expect("room 1");
    let t = room["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == TABLE)
        .expect("table 0");
    t["moves"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| serde_json::from_value(m[1].clone()).unwrap())
        .collect()
}

pub fn check_outcome(p: &Player, winner: u64) {
    let g = p
        .view
        .finished
        .back()
        .expect("the game ended in the player's view");
    assert_eq!(
        g.game.outcome.map(|o| match o {
            Outcome::Win { player, .. } => player,
            Outcome::Draw => 0,
        }),
        Some(winner)
    );
}

/// Everything a player was acknowledged is in the server's move list, once,
/// in order; the player's pushes had no gap; the connection never dropped.
pub fn check_players(cl: &Cluster, a: &Player, b: &Player) {
    let server = server_moves(cl);
    let mut acked: Vec<(u64, Vec<u8>)> = a.acked.iter().chain(&b.acked).cloned().collect();
    acked.sort();
    let acked: Vec<Vec<u8>> = acked.into_iter().map(|(_, m)| m).collect();
    assert_eq!(
        server, acked,
        "the server's moves are exactly the acknowledged ones"
    );
    for p in [a, b] {
        assert!(
            p.c.closed().is_none(),
            "player {} was disconnected: {:?}",
            p.c.player(),
            p.c.closed()
        );
        assert_eq!(
            (p.view.gaps, p.view.mismatches),
            (0, 0),
            "player {} saw a gap or a mismatch",
            p.c.player()
        );
        let seen: Vec<Vec<u8>> = p
            .view
            .finished
            .back()
            .unwrap()
            .game
            .moves
            .iter()
            .map(|(_, m, _)| m.clone())
            .collect();
        assert_eq!(
            seen,
            server,
            "player {} saw the server's moves",
            p.c.player()
        );
    }
}
