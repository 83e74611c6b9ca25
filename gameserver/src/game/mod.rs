//! Table games: pure rules, no IO, no clock. A room's tables all play one
//! [`GameKind`]; [`Board`] dispatches to the game's [`Game`] implementation.
//!
//! To add a game: implement [`Game`] for its board, add a variant to
//! [`GameKind`] and [`Board`], and a line to each `match` below. The protocol
//! does not change: moves travel as the game's own bytes.

mod gomoku;

pub use gomoku::Gomoku;
use serde::{Deserialize, Serialize};

/// Why a move is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MoveError {
    #[error("it is not this seat's turn")]
    NotYourTurn,
    #[error("illegal move: {0}")]
    Illegal(&'static str),
}

/// How a game ends by its own rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    Win { seat: u8 },
    Draw,
}

/// A turn-based game's rules over its board. Deterministic: the same moves
/// from `new` always give the same board (master and standby rebuild boards
/// from the replicated move list).
pub trait Game: Clone + Send + 'static {
    /// Shown in room lists.
    const NAME: &'static str;
    /// Players per table.
    const SEATS: u8;
    fn new() -> Self;
    /// The seat whose turn it is.
    fn turn(&self) -> u8;
    /// Whether `seat` may play `mv` now. Never changes the board.
    fn check(&self, seat: u8, mv: &[u8]) -> Result<(), MoveError>;
    /// Plays a move `check` accepted; returns the end if the game is over.
    fn play(&mut self, seat: u8, mv: &[u8]) -> Option<End>;
    /// What the turn timer plays for an idle `seat` (a legal move, deterministic).
    fn idle_move(&self, seat: u8) -> Vec<u8>;
}

/// Which game a room plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GameKind {
    Gomoku,
}

impl GameKind {
    pub fn name(self) -> &'static str {
        match self {
            GameKind::Gomoku => Gomoku::NAME,
        }
    }
    pub fn seats(self) -> u8 {
        match self {
            GameKind::Gomoku => Gomoku::SEATS,
        }
    }
    pub fn parse(s: &str) -> Option<GameKind> {
        match s {
            "gomoku" => Some(GameKind::Gomoku),
            _ => None,
        }
    }
    pub fn new_board(self) -> Board {
        match self {
            GameKind::Gomoku => Board::Gomoku(Gomoku::new()),
        }
    }
}

/// A board of any game.
#[derive(Clone, Debug)]
pub enum Board {
    Gomoku(Gomoku),
}

impl Board {
    pub fn turn(&self) -> u8 {
        match self {
            Board::Gomoku(g) => g.turn(),
        }
    }
    pub fn check(&self, seat: u8, mv: &[u8]) -> Result<(), MoveError> {
        match self {
            Board::Gomoku(g) => g.check(seat, mv),
        }
    }
    pub fn play(&mut self, seat: u8, mv: &[u8]) -> Option<End> {
        match self {
            Board::Gomoku(g) => g.play(seat, mv),
        }
    }
    pub fn idle_move(&self, seat: u8) -> Vec<u8> {
        match self {
            Board::Gomoku(g) => g.idle_move(seat),
        }
    }
}
