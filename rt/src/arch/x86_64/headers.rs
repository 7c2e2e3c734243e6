//! Boot headers and notes an image opts into with a macro, so each loader finds the same
//! `rt_entry32`.

/// Emits a multiboot v1 header with the address fields (flag bit 16), which QEMU's `-kernel`
/// needs to load an ELF64 image, and asks for the memory map (bit 1).
#[macro_export]
macro_rules! multiboot1_header {
    () => {
        ::core::arch::global_asm!(
            r#"
            .section .multiboot_header, "a"
            .balign 4
        rt_mb1_header:
            .long 0x1BADB002
            .long 0x00010002
            .long -(0x1BADB002 + 0x00010002)
            .long rt_mb1_header
            .long __image_start
            .long __load_end
            .long __bss_end
            .long rt_entry32
            "#
        );
    };
}

/// Emits a multiboot2 header (architecture i386, 32-bit protected-mode entry) asking for the
/// memory map and module tags, with the entry address tag pointing at `rt_entry32`.
#[macro_export]
macro_rules! multiboot2_header {
    () => {
        ::core::arch::global_asm!(
            r#"
            .section .multiboot_header, "a"
            .balign 8
        rt_mb2_header:
            .long 0xE85250D6
            .long 0
            .long rt_mb2_header_end - rt_mb2_header
            .long -(0xE85250D6 + (rt_mb2_header_end - rt_mb2_header))
            /* information request: basic meminfo (4), mmap (6), modules (3), cmdline (1) */
            .balign 8
            .short 1
            .short 0
            .long 24
            .long 4
            .long 6
            .long 3
            .long 1
            /* entry address */
            .balign 8
            .short 3
            .short 0
            .long 12
            .long rt_entry32
            /* end */
            .balign 8
            .short 0
            .short 0
            .long 8
        rt_mb2_header_end:
            "#
        );
    };
}

/// Emits the PVH entry note (`XEN_ELFNOTE_PHYS32_ENTRY`, type 18, owner "Xen") naming
/// `rt_entry32` (or the 32-bit entry symbol given), so the image boots like a Xen PVH guest.
#[macro_export]
macro_rules! pvh_note {
    () => {
        $crate::pvh_note!(rt_entry32);
    };
    ($entry:ident) => {
        ::core::arch::global_asm!(concat!(
            r#"
            .section .note.Xen, "a", @note
            .balign 4
            .long 4
            .long 4
            .long 18
            .asciz "Xen"
            .balign 4
            .long "#,
            stringify!($entry),
            r#"
            .balign 4
            "#
        ));
    };
}
