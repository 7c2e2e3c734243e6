//! microhv: the ring-0 image.
//!
//! Boot path: `rt_entry32` (the `rt` crate) takes the CPU from the loader's 32-bit state to
//! 64-bit mode and calls [`rt_main`], which sets up logging and the per-CPU tables, copies the
//! boot information, starts the frame allocator, picks the virtualization backend (SVM on AMD
//! and Hygon CPUs, VMX on every other), builds dom0 and hands the CPU to the core's run loop. It
//! never returns: the run ends with a verdict line and an exit status (`fatal::stop`).
#![no_std]
#![cfg_attr(image, no_main)]

// Without `cfg(image)` (see `rt::build`) this is a hosted stub that only points at the runner.
#[cfg(not(image))]
extern crate std;
rt::hosted_main!();

mod arch;
mod bootinfo;
mod fatal;
mod logger;
mod madt;
mod phys;

use arch::Arch;
use arch::x86_64::{gdt, idt, smp};
use microhv_core::boot::{self, BootInfo, Options, Range};
use microhv_core::cpus;
use microhv_core::frames::FRAME_SIZE;
use microhv_core::hv::{Hv, ModuleRef};
use microhv_core::hwcaps::{self, Unavailable};
use microhv_core::status::StopStatus;
use phys::IdentityMem;
use spin::mutex::SpinMutex;

rt::multiboot1_header!();
rt::multiboot2_header!();

/// The hypervisor: frames, domains, backend. Filled in by `rt_main`. A test-and-test-and-set
/// lock, not a ticket lock: when microhv's CPUs are themselves virtual (QEMU's threads on fewer
/// host cores, a nested setup), a FIFO lock hands itself to a waiter that is not running and
/// every CPU waits for the host to schedule it (Linux falls back to a test-and-set lock under a
/// hypervisor for the same reason). Measured with QEMU TCG `-smp 4` on two host cores, the
/// conformance run took 54–95 s with a ticket lock, 8–18 s with this one. No CPU holds it in a
/// loop: each releases it to run a guest, to halt, or between two batches of scrubbing.
static HV: SpinMutex<Hv<Arch, IdentityMem>> = SpinMutex::new(Hv::new(
    Arch::None,
    IdentityMem,
    mmu::Config { format: mmu::Format::Ept, large_2m: false, large_1g: false },
));

unsafe extern "C" {
    static __image_start: u8;
    static __text_end: u8;
    static __rodata_end: u8;
    static __image_end: u8;
    static rt_stack_guard: u8;
}

// Every guard page fits the layout: the boot stack's, then `gdt::guard_pages` (two IST stacks
// per CPU, and each AP's own stack).
const _: () =
    assert!(1 + 2 * cpus::MAX_CPUS + (cpus::MAX_CPUS - 1) <= microhv_core::hostmap::MAX_GUARDS);

/// The image's layout for its W^X map: the linker script's boundaries and the stacks' guards.
fn image_layout() -> microhv_core::hostmap::Layout {
    let image = image_range();
    let mut guards = [0; microhv_core::hostmap::MAX_GUARDS];
    let all =
        core::iter::once(core::ptr::addr_of!(rt_stack_guard) as u64).chain(gdt::guard_pages());
    let mut n_guards = 0;
    for (slot, g) in guards.iter_mut().zip(all) {
        (*slot, n_guards) = (g, n_guards + 1);
    }
    microhv_core::hostmap::Layout {
        start: image.start,
        // Only the addresses of the linker-script symbols are taken.
        text_end: core::ptr::addr_of!(__text_end) as u64,
        rodata_end: core::ptr::addr_of!(__rodata_end) as u64,
        end: image.end,
        guards,
        n_guards,
    }
}

fn image_range() -> Range {
    // Only the addresses of the linker-script symbols are taken.
    Range {
        start: core::ptr::addr_of!(__image_start) as u64,
        end: core::ptr::addr_of!(__image_end) as u64,
    }
}

/// Called by `rt_entry32` in 64-bit mode with the loader's `eax` and `ebx`.
#[unsafe(no_mangle)]
extern "C" fn rt_main(magic: u32, info: u32) -> ! {
    logger::init();
    if let Err(e) = arch::x86_64::paging::init(&image_layout()) {
        fatal::stop(StopStatus::BootError, format_args!("page tables: {e}"));
    }
    let sel = gdt::init();
    idt::init(sel.code.0);
    arch::x86_64::lapic::mask_legacy_pics();
    log::info!(
        "microhv {} starting (tsc {})",
        env!("CARGO_PKG_VERSION"),
        arch::x86_64::cpu::rdtsc()
    );

    // SAFETY: nothing has allocated yet; the loader's structures are intact.
    let boot = match unsafe { bootinfo::parse(magic, info) } {
        Ok(b) => b,
        Err(e) => fatal::stop(StopStatus::BootError, format_args!("boot information: {e}")),
    };
    // The boot CPU's APIC id as its APIC holds it now (firmware may have changed the initial
    // one CPUID reports; in x2APIC mode, which microhv does not start APs in, that one).
    let bsp = if arch::x86_64::lapic::x2apic_mode() {
        arch::x86_64::cpu::cpuid(1, 0)[1] >> 24
    } else {
        arch::x86_64::lapic::id(arch::x86_64::lapic::enable())
    };
    // Read now, while the loader's copy of the RSDP is certainly intact.
    let found = madt::find_cpus(&boot, bsp);
    let (opts, bad) = Options::parse(&boot.cmdline);
    log::set_max_level(opts.log_level);
    if let Some(t) = opts.selftest {
        selftest(t);
    }
    for b in bad {
        log::warn!("ignoring command-line word {:?}", b.0);
    }
    if boot.truncated_cmdline {
        log::warn!("a command line longer than {} bytes was cut", boot::MAX_CMDLINE);
    }
    let image = image_range();
    let mut hv = HV.lock();
    // The local APIC timer counts through the TSC measurement: the SVM backend takes its rate
    // from that window instead of waiting for one of its own.
    arch::x86_64::lapic::start_counting();
    let (khz, source) = arch::x86_64::tsc::khz();
    hv.tsc_khz = khz;
    log::info!("TSC {khz} kHz ({source:?})");
    let free = boot::init_frames(&boot, image, &mut hv.frames);
    hv.hv_frames = (boot.ram_bytes() / FRAME_SIZE).saturating_sub(hv.frames.managed_frames());
    log::info!(
        "loader {:?}: {} MiB RAM, {} module(s); image {:#x}-{:#x}; {} MiB free",
        boot.loader,
        boot.ram_bytes() >> 20,
        boot.modules.len(),
        image.start,
        image.end,
        (free * FRAME_SIZE) >> 20,
    );
    for m in &boot.modules {
        log::info!("module {:#x}-{:#x} {:?}", m.range.start, m.range.end, m.cmdline.as_str());
    }

    let vendor = hwcaps::vendor(arch::x86_64::cpu::cpuid(0, 0));
    if hwcaps::is_amd_vendor(&vendor) {
        start_svm(&mut hv, &vendor);
    } else {
        start_vmx(&mut hv, sel, &vendor);
    }

    if found.left_out > 0 {
        log::warn!("{} CPU(s) left out: microhv has room for {}", found.left_out, cpus::MAX_CPUS);
    }
    let modules: heapless::Vec<Range, { boot::MAX_MODULES }> =
        boot.modules.iter().map(|m| m.range).collect();
    let trampoline = cpus::trampoline_page(&boot.ram, &modules);
    hv.cpus = match trampoline {
        _ if found.apic_ids.len() < 2 => 1,
        None => {
            log::warn!("no free page of RAM below 0x9f000 for the APs' trampoline: no AP started");
            1
        }
        Some(page) => {
            let amd = hwcaps::is_amd_vendor(&vendor);
            smp::start_aps(&found, page, &mut hv.frames, amd, khz)
        }
    };
    log::info!("{} CPU(s) online", hv.cpus);
    start_dom0(&mut hv, &boot, &opts);
    if hv.cpus == 1 {
        // Nothing to share: the lock stays held while the guests run.
        let stop = hv.run();
        fatal::stop(stop.status, format_args!("{}", stop.reason))
    }
    arch::x86_64::lapic::init_idle_timer(khz);
    microhv_core::smp::set_hooks(kick, arch::x86_64::cpu::rdtsc);
    let runner = runner(&mut hv, 0);
    drop(hv);
    smp::release_aps();
    run_cpu(0, runner)
}

/// Kicks CPU `cpu` (`microhv_core::smp`). A kick the APIC could not send is not waited for
/// in vain: the CPU's guest exits at the end of its slice anyway.
fn kick(cpu: usize) {
    if let Some(id) = smp::apic_id(cpu)
        && let Err(e) = arch::x86_64::lapic::kick(id)
    {
        log::warn!("kick of cpu {cpu}: {e}");
    }
}

/// What a runner is built from: the frame set aside for an AP at its start-up
/// (`smp::runner_frame`; none for the boot CPU, whose runner is the backend's own), never the
/// allocator, whose free memory dom0 may already be counting.
struct SetAside(Option<u64>);

impl microhv_core::exit::FrameSource for SetAside {
    fn alloc_zeroed(&mut self) -> Option<u64> {
        self.0.take()
    }

    fn free(&mut self, pa: u64) {
        debug_assert!(self.0.is_none(), "the set-aside frame is one");
        self.0 = Some(pa);
    }
}

/// Builds CPU `cpu`'s runner, on that CPU.
fn runner(
    hv: &mut Hv<Arch, IdentityMem>,
    cpu: usize,
) -> Option<<Arch as microhv_core::exit::Backend>::Runner> {
    use microhv_core::exit::Backend;
    hv.backend.set_cpu(cpu);
    let mut aside = SetAside(smp::runner_frame(cpu));
    let built = hv.backend.runner(cpu, &mut aside);
    debug_assert!(aside.0.is_none(), "cpu {cpu}'s runner left its frame");
    match built {
        Ok(r) => Some(r),
        Err(e) => {
            log::warn!("cpu {cpu} runs no vCPU: its runner failed ({e:?})");
            None
        }
    }
}

/// Runs vCPUs on this CPU (number `cpu`) until the machine stops; a CPU without a runner
/// stays halted.
fn run_cpu(cpu: usize, runner: Option<<Arch as microhv_core::exit::Backend>::Runner>) -> ! {
    let Some(runner) = runner else { arch::x86_64::cpu::halt_forever() };
    let stop = Hv::run_cpu(&HV, cpu, runner, arch::x86_64::lapic::halt_for);
    fatal::stop(stop.status, format_args!("{}", stop.reason))
}

/// An AP's life once the boot CPU has released it (`smp::ap_main`).
pub fn ap_run(cpu: usize) -> ! {
    let runner = runner(&mut HV.lock(), cpu);
    run_cpu(cpu, runner)
}

/// Does what microhv's mappings forbid; the page fault that follows ends the run (status 4).
fn selftest(t: boot::SelfTest) {
    /// `ret`, in writable data.
    static RET: spin::Mutex<[u8; 1]> = spin::Mutex::new([0xc3]);
    let target = match t {
        boot::SelfTest::WriteText => rt_main as *const () as u64,
        boot::SelfTest::ExecData => RET.lock().as_ptr() as u64,
        boot::SelfTest::StackGuard => core::ptr::addr_of!(rt_stack_guard) as u64,
    };
    log::info!("self-test {t:?}: touching {target:#x}, which must fault");
    // SAFETY: none of these can complete: the code and guard pages are not writable and the data
    // page is not executable, so each access raises #PF and the machine stops in `fatal`.
    unsafe {
        match t {
            boot::SelfTest::ExecData => {
                core::mem::transmute::<u64, extern "C" fn()>(target)();
            }
            _ => (target as *mut u8).write_volatile(0xcc),
        }
    }
    log::error!("self-test {t:?}: the access did not fault");
}

/// Builds dom0 from the first boot module; the others are handed to it.
fn start_dom0(hv: &mut Hv<Arch, IdentityMem>, boot: &BootInfo, opts: &Options) {
    let Some((dom0, rest)) = boot.modules.split_first() else {
        fatal::stop(StopStatus::BootError, format_args!("no dom0 module"))
    };
    // SAFETY: the module's frames are reserved from the allocator for ever and lie in the
    // identity map (the loader placed them in RAM below 4 GiB); nothing writes to them.
    let image = unsafe {
        core::slice::from_raw_parts(dom0.range.start as *const u8, dom0.range.len() as usize)
    };
    let mut mods: heapless::Vec<ModuleRef<'_>, { boot::MAX_MODULES }> = heapless::Vec::new();
    for m in rest {
        let _ = mods.push(ModuleRef { range: m.range, cmdline: m.cmdline.as_str() });
    }
    if let Err(e) = hv.build_dom0(image, dom0.args(), opts.dom0_mem, &mods) {
        fatal::stop(StopStatus::BootError, format_args!("cannot build dom0: {e:?}"));
    }
}
/// Enables VMX (Intel and every vendor but AMD's) and installs the VMX backend.
fn start_vmx(hv: &mut Hv<Arch, IdentityMem>, sel: gdt::Selectors, vendor: &[u8; 12]) {
    let (features, msrs) = match arch::vmx::detect() {
        Ok(f) => f,
        Err(e) => unavailable(
            "VMX",
            e,
            vendor,
            "CPUID.1:ECX.VMX[bit 5]",
            "the firmware locked IA32_FEATURE_CONTROL with VMX disabled",
        ),
    };
    log::info!(
        "VMX with EPT (2M {}, 1G {}), VPID, unrestricted guest, preemption timer rate {}",
        features.ept_2m,
        features.ept_1g,
        features.preemption_timer_rate
    );
    hv.mmu_config = mmu::Config {
        format: mmu::Format::Ept,
        large_2m: features.ept_2m,
        large_1g: features.ept_1g,
    };
    let vmx = arch::vmx::Vmx::new(features, msrs, sel, &mut hv.machine());
    match vmx {
        Ok(b) => hv.backend = Arch::Vmx(b),
        Err(e) => fatal::stop(StopStatus::NoVirtualization, format_args!("VMX setup: {e}")),
    }
}

/// Enables SVM (AMD and Hygon CPUs) and installs the SVM backend.
fn start_svm(hv: &mut Hv<Arch, IdentityMem>, vendor: &[u8; 12]) {
    let features = match arch::svm::detect() {
        Ok(f) => f,
        Err(e) => unavailable(
            "SVM",
            e,
            vendor,
            "CPUID.8000_0001h:ECX.SVM[bit 2]",
            "disabled by firmware (VM_CR.SVMDIS set and VM_CR.LOCK set)",
        ),
    };
    log::info!(
        "SVM with NPT (1G {}), revision {}, {} ASIDs, NRIP save {}, decode assists {}, flush by \
         ASID {}",
        features.npt_1g,
        features.revision,
        features.asids,
        features.nrip_save,
        features.decode_assists,
        features.flush_by_asid,
    );
    // Nested page tables are long-mode page tables: 2 MiB leaves always exist, 1 GiB ones
    // where the CPU has 1 GiB pages.
    hv.mmu_config =
        mmu::Config { format: mmu::Format::Npt, large_2m: true, large_1g: features.npt_1g };
    match arch::svm::Svm::new(features, &mut hv.frames, hv.tsc_khz) {
        Ok(b) => hv.backend = Arch::Svm(b),
        Err(e) => fatal::stop(StopStatus::NoVirtualization, format_args!("SVM setup: {e}")),
    }
}

/// Reports why the CPU's `ext` (VMX or SVM) cannot be used and stops: `cpuid` names the
/// feature bit that was clear, `firmware` how the firmware disabled it.
fn unavailable(ext: &str, e: Unavailable, vendor: &[u8; 12], cpuid: &str, firmware: &str) -> ! {
    let vendor = core::str::from_utf8(vendor).unwrap_or("?");
    match e {
        Unavailable::NotOffered => log::error!("no {ext}: {cpuid} = 0 on this {vendor} CPU"),
        Unavailable::DisabledByFirmware => log::error!("no {ext}: {firmware} ({vendor})"),
        Unavailable::Missing(list) => {
            for m in list.iter() {
                log::error!("{ext} lacks {} ({})", m.what, m.source);
            }
        }
    }
    fatal::stop(StopStatus::NoVirtualization, format_args!("this CPU cannot run microhv"))
}
