//! The second-level (EPT / NPT) MMU of microhv, modelled on KVM's TDP MMU.
#![no_std]
