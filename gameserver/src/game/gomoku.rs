//! Gomoku (freestyle): 15×15, black (seat 0) first, five or more in a row
//! wins, a full board is a draw. A move is two bytes: `[x, y]`, each < 15.

use super::{End, Game, MoveError};

/// Cells per side.
pub const SIZE: usize = 15;
const CELLS: usize = SIZE * SIZE;

#[derive(Clone, Debug)]
pub struct Gomoku {
    /// 0 empty, 1 seat 0's stone, 2 seat 1's.
    cells: [u8; CELLS],
    turn: u8,
    placed: u16,
}

impl Gomoku {
    pub fn cell(&self, x: usize, y: usize) -> u8 {
        self.cells[y * SIZE + x]
    }

    fn run(&self, x: usize, y: usize, dx: isize, dy: isize, stone: u8) -> usize {
        let mut n = 0;
        let (mut cx, mut cy) = (x as isize + dx, y as isize + dy);
        while (0..SIZE as isize).contains(&cx)
            && (0..SIZE as isize).contains(&cy)
            && self.cells[cy as usize * SIZE + cx as usize] == stone
        {
            n += 1;
            cx += dx;
            cy += dy;
        }
        n
    }
}

/// Cells from the centre outwards (ring, then row, then column): the order
/// the turn timer fills for an idle player.
fn idle_order() -> impl Iterator<Item = (usize, usize)> {
    let c = (SIZE / 2) as isize;
    let mut v: Vec<(usize, usize)> = (0..SIZE)
        .flat_map(|y| (0..SIZE).map(move |x| (x, y)))
        .collect();
    v.sort_by_key(|&(x, y)| ((x as isize - c).abs().max((y as isize - c).abs()), y, x));
    v.into_iter()
}

impl Game for Gomoku {
    const NAME: &'static str = "gomoku";
    const SEATS: u8 = 2;

    fn new() -> Self {
        Gomoku {
            cells: [0; CELLS],
            turn: 0,
            placed: 0,
        }
    }

    fn turn(&self) -> u8 {
        self.turn
    }

    fn check(&self, seat: u8, mv: &[u8]) -> Result<(), MoveError> {
        if seat != self.turn {
            return Err(MoveError::NotYourTurn);
        }
        let &[x, y] = mv else {
            return Err(MoveError::Illegal("a gomoku move is two bytes, [x, y]"));
        };
        if x as usize >= SIZE || y as usize >= SIZE {
            return Err(MoveError::Illegal("off the 15x15 board"));
        }
        if self.cell(x as usize, y as usize) != 0 {
            return Err(MoveError::Illegal("that cell is taken"));
        }
        Ok(())
    }

    fn play(&mut self, seat: u8, mv: &[u8]) -> Option<End> {
        assert!(
            self.check(seat, mv).is_ok(),
            "play of an unchecked move {mv:?} by seat {seat}"
        );
        let (x, y) = (mv[0] as usize, mv[1] as usize);
        let stone = seat + 1;
        self.cells[y * SIZE + x] = stone;
        self.placed += 1;
        self.turn = 1 - self.turn;
        for (dx, dy) in [(1, 0), (0, 1), (1, 1), (1, -1)] {
            if 1 + self.run(x, y, dx, dy, stone) + self.run(x, y, -dx, -dy, stone) >= 5 {
                return Some(End::Win { seat });
            }
        }
        (self.placed as usize == CELLS).then_some(End::Draw)
    }

    fn idle_move(&self, _seat: u8) -> Vec<u8> {
        let (x, y) = idle_order()
            .find(|&(x, y)| self.cell(x, y) == 0)
            .expect("a running game has a free cell (a full board ended it)");
        vec![x as u8, y as u8]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_in_a_row_wins_in_every_direction() {
        for (dx, dy) in [(1i32, 0i32), (0, 1), (1, 1), (1, -1)] {
            let mut g = Gomoku::new();
            let mut end = None;
            for i in 0..5 {
                let (x, y) = (5 + dx * i, 7 + dy * i);
                assert_eq!(end, None);
                end = g.play(0, &[x as u8, y as u8]);
                if end.is_none() {
                    g.play(1, &[i as u8, 0]);
                }
            }
            assert_eq!(end, Some(End::Win { seat: 0 }), "direction {dx},{dy}");
        }
    }

    #[test]
    fn moves_are_checked() {
        let mut g = Gomoku::new();
        assert_eq!(g.check(1, &[0, 0]), Err(MoveError::NotYourTurn));
        assert!(matches!(g.check(0, &[15, 0]), Err(MoveError::Illegal(_))));
        assert!(matches!(g.check(0, &[1]), Err(MoveError::Illegal(_))));
        g.play(0, &[3, 3]);
        assert!(matches!(g.check(1, &[3, 3]), Err(MoveError::Illegal(_))));
        assert_eq!(g.turn(), 1);
    }

    #[test]
    fn idle_moves_fill_the_board_to_a_legal_end() {
        let mut g = Gomoku::new();
        assert_eq!(g.idle_move(0), vec![7, 7]);
        let mut n = 0;
        loop {
            let s = g.turn();
            let mv = g.idle_move(s);
            assert!(g.check(s, &mv).is_ok());
            n += 1;
            if g.play(s, &mv).is_some() {
                break;
            }
            assert!(n < CELLS);
        }
    }
}
