//! The log's lock order, checked in debug and test builds.
//!
//! ```text
//! compact_lock → flush_lock → app (the append lock) → segs → spare
//! ```
//! A thread may take a lock only if every lock it already holds comes earlier in
//! this order. Each thread keeps the ranks it holds in a thread-local list; a
//! violation panics before the lock is taken (a message instead of a deadlock).
//! Release builds keep only the plain lock: the wrappers compile to nothing.

use std::ops::{Deref, DerefMut};

use parking_lot::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// A lock's place in the order: lower ranks are taken first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rank {
    Compact = 1,
    Flush = 2,
    App = 3,
    Segs = 4,
    Spare = 5,
}

/// The order as written in ARCHITECTURE.md, for the panic message.
#[cfg(any(debug_assertions, test))]
pub const ORDER: &str = "compact_lock → flush_lock → app → segs → spare";

#[cfg(any(debug_assertions, test))]
thread_local! {
    static HELD: std::cell::RefCell<Vec<Rank>> = const { std::cell::RefCell::new(Vec::new()) };
}

#[cfg(any(debug_assertions, test))]
fn enter(rank: Rank) {
    HELD.with(|h| {
        let mut h = h.borrow_mut();
        if let Some(&worst) = h.iter().max() {
            assert!(
                worst < rank,
                "lock order violated: taking {rank:?} while holding {:?}; the order is {ORDER}",
                *h
            );
        }
        h.push(rank);
    });
}

#[cfg(any(debug_assertions, test))]
fn leave(rank: Rank) {
    // `try_with`: during thread teardown the list may already be gone.
    let _ = HELD.try_with(|h| {
        let mut h = h.borrow_mut();
        if let Some(i) = h.iter().rposition(|&r| r == rank) {
            h.remove(i);
        }
    });
}

/// A guard that also records its rank as held by this thread until dropped.
pub struct Held<G> {
    g: G,
    #[cfg(any(debug_assertions, test))]
    rank: Rank,
}

impl<G> Held<G> {
    #[inline]
    fn new(rank: Rank, take: impl FnOnce() -> G) -> Held<G> {
        #[cfg(any(debug_assertions, test))]
        enter(rank);
        #[cfg(not(any(debug_assertions, test)))]
        let _ = rank;
        Held {
            g: take(),
            #[cfg(any(debug_assertions, test))]
            rank,
        }
    }

    /// The lock's own guard (for a condition variable's wait).
    pub fn guard(&mut self) -> &mut G {
        &mut self.g
    }
}

impl<G> Drop for Held<G> {
    #[inline]
    fn drop(&mut self) {
        #[cfg(any(debug_assertions, test))]
        leave(self.rank);
    }
}

impl<G: Deref> Deref for Held<G> {
    type Target = G::Target;
    #[inline]
    fn deref(&self) -> &G::Target {
        &self.g
    }
}

impl<G: DerefMut> DerefMut for Held<G> {
    #[inline]
    fn deref_mut(&mut self) -> &mut G::Target {
        &mut self.g
    }
}

/// A mutex with a place in the lock order.
pub struct OrderedMutex<T> {
    rank: Rank,
    m: Mutex<T>,
}

impl<T> OrderedMutex<T> {
    pub const fn new(rank: Rank, v: T) -> Self {
        OrderedMutex {
            rank,
            m: Mutex::new(v),
        }
    }
    #[inline]
    pub fn lock(&self) -> Held<MutexGuard<'_, T>> {
        Held::new(self.rank, || self.m.lock())
    }
}

/// A read-write lock with a place in the lock order.
pub struct OrderedRwLock<T> {
    rank: Rank,
    l: RwLock<T>,
}

impl<T> OrderedRwLock<T> {
    pub const fn new(rank: Rank, v: T) -> Self {
        OrderedRwLock {
            rank,
            l: RwLock::new(v),
        }
    }
    #[inline]
    pub fn read(&self) -> Held<RwLockReadGuard<'_, T>> {
        Held::new(self.rank, || self.l.read())
    }
    #[inline]
    pub fn write(&self) -> Held<RwLockWriteGuard<'_, T>> {
        Held::new(self.rank, || self.l.write())
    }
}
