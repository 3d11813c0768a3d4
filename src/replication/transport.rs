//! Walsender transport (to be written).
