//! strata-layerdb: the store of layers, images and tags (issue 4; being built).
