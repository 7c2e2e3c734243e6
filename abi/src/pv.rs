//! Split drivers served by dom0: the configuration store a frontend finds its backend through,
//! the PV console ring and the PV block ring (`ABI.md`, "Split drivers"). Neither involves microhv beyond event
//! channels and grants: these are the agreements between dom0 and a domain's kernel, kept here
//! so that dom0, the test guests and any other guest read the same layout.
//!
//! Everything here works on copies of shared pages (`[u8; PAGE]`): the other party may change
//! the page at any time, so a reader takes a snapshot ([`snapshot`]) and parses that, and never
//! trusts a value it did not check.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Bytes of a page: the store and the ring are one page each.
pub const PAGE: usize = 4096;

pub use crate::pvh::STORE_INFO_OFFSET;

/// [`StoreInfo::magic`]: "MHVSTORE" as a little-endian u64.
pub const STORE_INFO_MAGIC: u64 = u64::from_le_bytes(*b"MHVSTORE");

/// The store's descriptor, at [`STORE_INFO_OFFSET`] of the start page; all zeros (no magic)
/// when dom0 gave the domain no store (it has no devices).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct StoreInfo {
    /// [`STORE_INFO_MAGIC`].
    pub magic: u64,
    /// 1.
    pub version: u32,
    /// The domain that owns the store (and grants its page): dom0, 0.
    pub backend: u32,
    /// The grant reference (of `backend`'s table) of the store page, granted writable.
    pub gref: u32,
    /// A port of `backend`'s, unbound and offered to the domain: bind it
    /// (`EvtchnBindInterdomain`) for the store's notifications.
    pub port: u32,
    /// 0.
    pub reserved: [u64; 5],
}
const _: () = assert!(size_of::<StoreInfo>() == 64);

/// Entries of the store page, 64 bytes each.
pub const STORE_ENTRIES: usize = PAGE / STORE_ENTRY;
/// Bytes of an entry: the key, then the value.
pub const STORE_ENTRY: usize = 64;
/// Bytes of a key (printable ASCII without spaces, NUL-padded).
pub const STORE_KEY: usize = 40;
/// Bytes of a value (printable ASCII, NUL-padded; numbers in decimal).
pub const STORE_VALUE: usize = STORE_ENTRY - STORE_KEY;

/// Which half of the store page an entry is in: who writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Half {
    /// Entries `0..32`: written by dom0 only, read by the domain.
    Backend,
    /// Entries `32..64`: written by the domain only, read (and checked) by dom0.
    Frontend,
}

impl Half {
    fn entries(self) -> core::ops::Range<usize> {
        match self {
            Half::Backend => 0..STORE_ENTRIES / 2,
            Half::Frontend => STORE_ENTRIES / 2..STORE_ENTRIES,
        }
    }
}

/// Why a store write failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreError {
    /// A key or value too long, empty key, or not printable ASCII.
    Invalid,
    /// Every entry of the half is in use.
    Full,
}

/// The xenbus states (Xen's numbers) the `state` keys hold.
pub mod state {
    /// The frontend is setting itself up.
    pub const INITIALISING: u64 = 1;
    /// The backend is ready for the frontend's ring and port.
    pub const INIT_WAIT: u64 = 2;
    /// The frontend wrote its ring and port.
    pub const INITIALISED: u64 = 3;
    /// Both ends are connected: requests may flow.
    pub const CONNECTED: u64 = 4;
    /// The end is going away.
    pub const CLOSING: u64 = 5;
    /// The end is closed (the backend: it disconnected the frontend, see the `error` key).
    pub const CLOSED: u64 = 6;
}

/// The keys of the first virtual block device (`device/vbd/0`), as in xenstore.
pub mod keys {
    /// Backend half: the backend's domid.
    pub const VBD_BACKEND_ID: &str = "device/vbd/0/backend-id";
    /// Backend half: the disk's size in 512-byte sectors.
    pub const VBD_SECTORS: &str = "backend/vbd/0/sectors";
    /// Backend half: the backend's xenbus state.
    pub const VBD_BACKEND_STATE: &str = "backend/vbd/0/state";
    /// Backend half: why the backend closed the device (short text), when it did.
    pub const VBD_ERROR: &str = "backend/vbd/0/error";
    /// Frontend half: the grant reference (of the domain's table) of the ring page.
    pub const VBD_RING_REF: &str = "device/vbd/0/ring-ref";
    /// Frontend half: the domain's port, unbound and offered to the backend.
    pub const VBD_EVENT_CHANNEL: &str = "device/vbd/0/event-channel";
    /// Frontend half: the frontend's xenbus state. Written after the other frontend keys.
    pub const VBD_STATE: &str = "device/vbd/0/state";
    /// Backend half: dom0's grant reference (of its own table) of the console page, granted
    /// writable to the domain.
    pub const CONSOLE_RING_REF: &str = "console/ring-ref";
    /// Backend half: dom0's port for the console, unbound and offered to the domain.
    pub const CONSOLE_PORT: &str = "console/port";
    /// Frontend half: 4 (`Connected`) while the domain uses the PV console (it mapped the page
    /// and bound the port); dom0 then puts console input into the page rather than COM1.
    pub const CONSOLE_STATE: &str = "console/state";
}

fn entry(page: &[u8; PAGE], i: usize) -> (&[u8], &[u8]) {
    let e = &page[i * STORE_ENTRY..(i + 1) * STORE_ENTRY];
    let (k, v) = e.split_at(STORE_KEY);
    (trim(k), trim(v))
}

/// The bytes before the first NUL.
fn trim(b: &[u8]) -> &[u8] {
    &b[..b.iter().position(|&c| c == 0).unwrap_or(b.len())]
}

fn printable(b: &[u8]) -> bool {
    b.iter().all(|c| (0x20..0x7f).contains(c))
}

/// The value of `key` in `half`, if there is one and it is printable ASCII (the first entry
/// with the key counts).
pub fn get<'a>(page: &'a [u8; PAGE], half: Half, key: &str) -> Option<&'a str> {
    let (_, v) = half.entries().map(|i| entry(page, i)).find(|(k, _)| *k == key.as_bytes())?;
    if printable(v) { core::str::from_utf8(v).ok() } else { None }
}

/// The value of `key` as a decimal number (no sign, no spaces, no leading `+`).
pub fn get_u64(page: &[u8; PAGE], half: Half, key: &str) -> Option<u64> {
    let v = get(page, half, key)?;
    if v.is_empty() || !v.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

/// Sets `key` to `value` in `half`: the entry with the key, else the first free one (empty
/// key). Keys are 1..=40 printable bytes without spaces, values 0..=24 printable bytes.
pub fn set(page: &mut [u8; PAGE], half: Half, key: &str, value: &str) -> Result<(), StoreError> {
    let (k, v) = (key.as_bytes(), value.as_bytes());
    let key_ok = !k.is_empty() && k.len() <= STORE_KEY && printable(k) && !k.contains(&b' ');
    if !key_ok || v.len() > STORE_VALUE || !printable(v) {
        return Err(StoreError::Invalid);
    }
    let at = half
        .entries()
        .find(|&i| entry(page, i).0 == k)
        .or_else(|| half.entries().find(|&i| entry(page, i).0.is_empty()))
        .ok_or(StoreError::Full)?;
    let e = &mut page[at * STORE_ENTRY..(at + 1) * STORE_ENTRY];
    e.fill(0);
    e[..k.len()].copy_from_slice(k);
    e[STORE_KEY..STORE_KEY + v.len()].copy_from_slice(v);
    Ok(())
}

/// Sets `key` to the decimal `value`.
pub fn set_u64(page: &mut [u8; PAGE], half: Half, key: &str, value: u64) -> Result<(), StoreError> {
    // u64::MAX has 20 digits: the write cannot fail.
    let mut digits: heapless::String<20> = heapless::String::new();
    let _ = core::fmt::Write::write_fmt(&mut digits, format_args!("{value}"));
    set(page, half, key, &digits)
}

/// Copies a page the other party may be writing, word by word with volatile reads: what the
/// parsers above then read cannot change under them.
///
/// # Safety
/// `src` must be valid for reads of [`PAGE`] bytes and 8-byte aligned.
pub unsafe fn snapshot(src: *const u8) -> [u8; PAGE] {
    let mut out = [0u8; PAGE];
    let words = src.cast::<u64>();
    for (i, chunk) in out.chunks_exact_mut(8).enumerate() {
        // SAFETY: in bounds and aligned, as the caller promises.
        let w = unsafe { core::ptr::read_volatile(words.add(i)) };
        chunk.copy_from_slice(&w.to_le_bytes());
    }
    out
}

/// Writes the entries of `half` from `page` to the shared page at `dst`, with volatile writes,
/// leaving the other half as it is there.
///
/// # Safety
/// `dst` must be valid for writes of [`PAGE`] bytes and 8-byte aligned.
pub unsafe fn publish(dst: *mut u8, page: &[u8; PAGE], half: Half) {
    let words = dst.cast::<u64>();
    let r = half.entries();
    for i in r.start * STORE_ENTRY / 8..r.end * STORE_ENTRY / 8 {
        let w = u64::from_le_bytes(page[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
        // SAFETY: in bounds and aligned, as the caller promises.
        unsafe { core::ptr::write_volatile(words.add(i), w) };
    }
}

/// Bytes of the console page's input ring (dom0 → domain): `xencons_interface.in`.
pub const CONS_IN_SIZE: usize = 1024;
/// Bytes of the console page's output ring (domain → dom0): `xencons_interface.out`.
pub const CONS_OUT_SIZE: usize = 2048;
/// Byte offset of the input ring in the console page.
pub const CONS_IN: usize = 0;
/// Byte offset of the output ring in the console page.
pub const CONS_OUT: usize = CONS_IN + CONS_IN_SIZE;
/// Byte offset of `in_cons` (u32, written by the domain).
pub const CONS_IN_CONS: usize = CONS_OUT + CONS_OUT_SIZE;
/// Byte offset of `in_prod` (u32, written by dom0).
pub const CONS_IN_PROD: usize = CONS_IN_CONS + 4;
/// Byte offset of `out_cons` (u32, written by dom0).
pub const CONS_OUT_CONS: usize = CONS_IN_PROD + 4;
/// Byte offset of `out_prod` (u32, written by the domain).
pub const CONS_OUT_PROD: usize = CONS_OUT_CONS + 4;

/// The console page's layout: Xen's `xencons_interface`. The indices run freely (wrapping);
/// byte number `n` of a ring is at `n % size` of its array. A producer fills bytes, then raises
/// its `*_prod` (after a fence) and sends an event; the consumer reads `prod - cons` bytes and
/// raises its `*_cons`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct ConsInterface {
    /// Input, dom0 → domain.
    pub input: [u8; CONS_IN_SIZE],
    /// Output, domain → dom0.
    pub output: [u8; CONS_OUT_SIZE],
    /// Input bytes the domain has taken.
    pub in_cons: u32,
    /// Input bytes dom0 has put.
    pub in_prod: u32,
    /// Output bytes dom0 has taken.
    pub out_cons: u32,
    /// Output bytes the domain has put.
    pub out_prod: u32,
}
const _: () = assert!(core::mem::offset_of!(ConsInterface, output) == CONS_OUT);
const _: () = assert!(core::mem::offset_of!(ConsInterface, in_cons) == CONS_IN_CONS);
const _: () = assert!(core::mem::offset_of!(ConsInterface, in_prod) == CONS_IN_PROD);
const _: () = assert!(core::mem::offset_of!(ConsInterface, out_cons) == CONS_OUT_CONS);
const _: () = assert!(core::mem::offset_of!(ConsInterface, out_prod) == CONS_OUT_PROD);
const _: () = assert!(size_of::<ConsInterface>() <= PAGE);

/// Slots of the block ring: at most this many requests are outstanding.
pub const BLK_RING_SLOTS: u32 = 32;
/// Byte offset of slot 0 in the ring page (after the header).
pub const BLK_RING_SLOT0: usize = 64;
/// Bytes of a slot: a request, overwritten by its response.
pub const BLK_SLOT: usize = 64;
/// Bytes of a sector.
pub const BLK_SECTOR: u64 = 512;
/// Sectors one request moves at most: one granted page.
pub const BLK_MAX_SECTORS: u8 = 8;

/// `BlkRequest::op`: read sectors into the granted page.
pub const BLK_OP_READ: u8 = 0;
/// `BlkRequest::op`: write sectors from the granted page.
pub const BLK_OP_WRITE: u8 = 1;
/// `BlkRequest::op`: make earlier writes durable (Xen's `BLKIF_OP_FLUSH_DISKCACHE`); no data.
pub const BLK_OP_FLUSH: u8 = 3;

/// `BlkResponse::status`: done.
pub const BLK_RSP_OKAY: i32 = 0;
/// `BlkResponse::status`: not done (sectors out of range, a bad grant, a disk error).
pub const BLK_RSP_ERROR: i32 = -1;
/// `BlkResponse::status`: an operation the backend does not know.
pub const BLK_RSP_EOPNOTSUPP: i32 = -2;

/// The ring page's header. The frontend writes `req_prod`, the backend `rsp_prod`; both only
/// ever increase (wrapping), and slot `n % BLK_RING_SLOTS` holds request / response `n`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct BlkRingHeader {
    /// Requests the frontend has put on the ring.
    pub req_prod: u32,
    /// Responses the backend has put on the ring.
    pub rsp_prod: u32,
    /// 0.
    pub reserved: [u32; 14],
}
const _: () = assert!(size_of::<BlkRingHeader>() == BLK_RING_SLOT0);

/// A request, in its slot.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct BlkRequest {
    /// The frontend's cookie, echoed in the response.
    pub id: u64,
    /// First sector.
    pub sector: u64,
    /// Grant reference (of the frontend's table, granted to the backend) of the data page; the
    /// data is at its offset 0. Writable for a read. Unused by a flush.
    pub gref: u32,
    /// A `BLK_OP_*`.
    pub op: u8,
    /// Sectors, `1..=BLK_MAX_SECTORS` (0 for a flush).
    pub nr_sectors: u8,
    /// 0.
    pub reserved: [u8; 42],
}
const _: () = assert!(size_of::<BlkRequest>() == BLK_SLOT);

/// A response, in the slot of its request.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct BlkResponse {
    /// The request's `id`.
    pub id: u64,
    /// A `BLK_RSP_*`.
    pub status: i32,
    /// The request's `op`.
    pub op: u8,
    /// 0.
    pub reserved: [u8; 51],
}
const _: () = assert!(size_of::<BlkResponse>() == BLK_SLOT);

/// The byte offset of the slot for request or response number `n`.
pub const fn blk_slot(n: u32) -> usize {
    BLK_RING_SLOT0 + (n % BLK_RING_SLOTS) as usize * BLK_SLOT
}
const _: () = assert!(blk_slot(BLK_RING_SLOTS - 1) + BLK_SLOT <= PAGE);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_set_found_and_replaced_in_their_half() {
        let mut p = [0u8; PAGE];
        set_u64(&mut p, Half::Backend, keys::VBD_SECTORS, 2048).unwrap();
        set(&mut p, Half::Frontend, keys::VBD_STATE, "3").unwrap();
        assert_eq!(get_u64(&p, Half::Backend, keys::VBD_SECTORS), Some(2048));
        assert_eq!(get(&p, Half::Backend, keys::VBD_STATE), None, "another half");
        set_u64(&mut p, Half::Frontend, keys::VBD_STATE, 4).unwrap();
        assert_eq!(get_u64(&p, Half::Frontend, keys::VBD_STATE), Some(4));
        assert_eq!(p.chunks(STORE_ENTRY).filter(|e| e[0] != 0).count(), 2, "replaced, not added");
        set_u64(&mut p, Half::Frontend, "n", u64::MAX).unwrap();
        assert_eq!(get_u64(&p, Half::Frontend, "n"), Some(u64::MAX));
    }

    #[test]
    fn bad_keys_values_and_a_full_half_are_errors() {
        let mut p = [0u8; PAGE];
        let long = "k".repeat(STORE_KEY + 1);
        assert_eq!(set(&mut p, Half::Backend, &long, "1"), Err(StoreError::Invalid));
        assert_eq!(set(&mut p, Half::Backend, "", "1"), Err(StoreError::Invalid));
        assert_eq!(set(&mut p, Half::Backend, "a b", "1"), Err(StoreError::Invalid));
        assert_eq!(set(&mut p, Half::Backend, "k", "\n"), Err(StoreError::Invalid));
        assert_eq!(set(&mut p, Half::Backend, "k", &"v".repeat(25)), Err(StoreError::Invalid));
        set(&mut p, Half::Backend, &"k".repeat(STORE_KEY), &"v".repeat(STORE_VALUE)).unwrap();
        for i in 1..STORE_ENTRIES / 2 {
            set_u64(&mut p, Half::Backend, &std::format!("k{i}"), i as u64).unwrap();
        }
        assert_eq!(set(&mut p, Half::Backend, "one-more", "1"), Err(StoreError::Full));
        assert!(get(&p, Half::Frontend, "k1").is_none(), "the other half is untouched");
    }

    #[test]
    fn hostile_values_do_not_parse() {
        let mut p = [0u8; PAGE];
        for v in ["", "-1", "+1", " 1", "0x10", "18446744073709551616", "1a"] {
            set(&mut p, Half::Frontend, "x", v).unwrap();
            assert_eq!(get_u64(&p, Half::Frontend, "x"), None, "{v:?}");
        }
        // Bytes a frontend wrote directly: not printable, or no NUL before the next entry.
        let at = STORE_ENTRIES / 2 * STORE_ENTRY;
        p[at..at + STORE_ENTRY].fill(0xff);
        assert_eq!(get(&p, Half::Frontend, "x"), None);
        p[at..at + STORE_KEY].fill(b'k');
        p[at + STORE_KEY..at + STORE_ENTRY].fill(b'7');
        assert_eq!(
            get(&p, Half::Frontend, &"k".repeat(STORE_KEY)),
            Some("777777777777777777777777")
        );
    }

    #[test]
    fn publish_writes_one_half_and_snapshot_reads_it_back() {
        let mut local = [0u8; PAGE];
        set(&mut local, Half::Backend, "a", "1").unwrap();
        set(&mut local, Half::Frontend, "b", "2").unwrap();
        #[repr(align(8))]
        struct Shared([u8; PAGE]);
        let mut shared = Shared([0xaa; PAGE]);
        // SAFETY: a local, aligned page.
        unsafe { publish(shared.0.as_mut_ptr(), &local, Half::Backend) };
        // SAFETY: as above.
        let snap = unsafe { snapshot(shared.0.as_ptr()) };
        assert_eq!(get(&snap, Half::Backend, "a"), Some("1"));
        assert!(snap[PAGE / 2..].iter().all(|&b| b == 0xaa), "the frontend half is the frontend's");
    }

    #[test]
    fn slots_wrap_around_the_ring() {
        assert_eq!(blk_slot(0), 64);
        assert_eq!(blk_slot(BLK_RING_SLOTS), 64);
        assert_eq!(blk_slot(u32::MAX), 64 + 31 * 64);
    }
}
