//! hs: hot standby.
