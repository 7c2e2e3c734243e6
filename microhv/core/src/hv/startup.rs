//! vCPU start-up as a PC does it (guest SMP): in a domain with
//! a PC (`DOMCREATE_DEVICE_MODEL`), the vCPUs dom0 did not start wait for a start-up IPI; INIT
//! puts a vCPU back into that wait (and its local APIC to its power-up state); a start-up IPI
//! to a waiting vCPU starts it in real mode at `vector << 12` (CS = `vector << 8`, IP 0), as a
//! CPU leaves wait-for-SIPI; one to a running vCPU is ignored, as the CPU ignores it. INIT keeps
//! IA32_APIC_BASE (x2APIC mode survives). vCPU 0, the bootstrap processor dom0 started, ignores
//! both (on hardware INIT would send it to the reset vector, which a PVH domain has no code
//! at), and the SDM's invalid self and all-including-self shorthands deliver neither
//! (`platform.rs`).

use super::*;
use crate::dev::lapic::Startup;

impl<B: Backend, P: PhysMem, const W: usize> Hv<B, P, W> {
    /// Acts on the INIT and start-up IPIs that reached domain `d`'s vCPUs.
    pub(super) fn startups(&mut self, d: usize) {
        let dom = &mut self.domains[d];
        let (Some(p), true) = (dom.platform.as_mut(), dom.device_model) else { return };
        for (l, vc) in p.lapics.iter_mut().zip(dom.vcpus.iter_mut()).skip(1) {
            // A vCPU running on another CPU takes its INIT or start-up IPI when it comes back.
            if vc.on.is_some() {
                continue;
            }
            match l.take_startup() {
                Some(Startup::Init) => {
                    l.init();
                    (vc.init, vc.halted, vc.io) = (Some(VcpuInit::default()), false, None);
                }
                Some(Startup::Sipi(vector)) if vc.init.is_some() => {
                    let init = VcpuInit { startup: Some(vector), ..VcpuInit::default() };
                    if let Some(arch) = vc.arch.as_mut() {
                        self.backend.reset_vcpu(arch, &init);
                        self.backend.unload(arch);
                    }
                    (vc.gprs, vc.init) = (init.gprs, None);
                }
                _ => {}
            }
        }
    }
}
