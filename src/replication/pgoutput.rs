//! pgoutput decoder (to be written).
