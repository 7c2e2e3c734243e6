//! Ending the machine with a status an emulator can report.

use rt::io::{outb, outl};

/// QEMU's `isa-debug-exit` device (`-device isa-debug-exit,iobase=0xf4,iosize=4`): QEMU exits
/// with `value << 1 | 1`.
const QEMU_DEBUG_EXIT: u16 = 0xf4;
/// Bochs's shutdown port: writing "Shutdown" ends the simulation.
const BOCHS_SHUTDOWN: u16 = 0x8900;

/// Ends the emulator with `code`, or halts a real machine.
pub fn exit_machine(code: u8) -> ! {
    // SAFETY: both ports are emulator control ports that exist only to end the machine; on a
    // machine without them the writes go nowhere and we halt below.
    unsafe {
        outl(QEMU_DEBUG_EXIT, code.into());
        for b in b"Shutdown" {
            outb(BOCHS_SHUTDOWN, *b);
        }
    }
    super::cpu::halt_forever()
}
