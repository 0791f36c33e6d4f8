//! hearth-package
