//! Shared code of the operator tools.
