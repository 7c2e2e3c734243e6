//! Unit tests: the behaviours of the spec's test plan (section 15), each named `pNN_...` after
//! its plan item, adapted where the project's decisions or the TDP-only scope change them.

mod common;
mod plan;
