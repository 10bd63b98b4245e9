//! A generic read-only FUSE adapter over a small filesystem trait.
//! It knows nothing of pxar or PBS.
