//! strata-runtime: containers on the FUSE union and the `strata` command.
//!
//! Not built yet (issue 6). It will join `strata-fs` (mounting layer stacks)
//! and `strata-layerdb` (the store of layers and images).
