//! The structured, frozen and transformer layers, one file each (filled in by the layers work).
