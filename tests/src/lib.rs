//! Whole-system tests live in tests/tests/*.rs; they start real binaries.
