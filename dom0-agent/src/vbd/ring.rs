//! One block ring, as dom0 maps it: taking requests, doing them against the domain's region,
//! answering (`ABI.md`, "The block ring").
//!
//! Everything in the ring page is the frontend's to change at any time: a request is copied out
//! of its slot (volatile) before it is looked at, `req_prod` is read once per round, and dom0's
//! own count of responses is kept here rather than read back from the page.

use super::VbdHypercalls;
use crate::disk::Sectors;
use abi::pv::{
    BLK_MAX_SECTORS, BLK_OP_FLUSH, BLK_OP_READ, BLK_OP_WRITE, BLK_RING_SLOTS, BLK_RSP_EOPNOTSUPP,
    BLK_RSP_ERROR, BLK_RSP_OKAY, BLK_SECTOR, BLK_SLOT, BlkRequest, BlkResponse, PAGE, blk_slot,
};
use core::sync::atomic::{Ordering, compiler_fence};
use zerocopy::{FromBytes, FromZeros, IntoBytes};

/// What a round of [`serve`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Round {
    /// This many requests were answered (perhaps 0).
    Answered(u32),
    /// `req_prod` claims more requests than the ring has slots: the frontend is broken or
    /// hostile, and the device is closed.
    Overrun,
}

/// Byte offset of `rsp_prod` in the ring page.
const RSP_PROD: usize = 4;

/// Answers the requests waiting in the ring at `page` (at most [`BLK_RING_SLOTS`], since more
/// is an overrun), advancing `rsp_prod` (dom0's count of responses) past them.
///
/// # Safety
/// `page` must be valid for volatile reads and writes of a page and 8-byte aligned (the ring,
/// mapped), for the whole call.
pub(super) unsafe fn serve<H: VbdHypercalls>(
    hv: &H,
    domid: u32,
    region: &dyn Sectors,
    page: *mut u8,
    rsp_prod: &mut u32,
) -> Round {
    // SAFETY: offset 0 of the mapped page, aligned (the caller's promise).
    let req_prod = unsafe { core::ptr::read_volatile(page.cast::<u32>()) };
    // The slots are read after `req_prod`, as the frontend wrote them before it.
    compiler_fence(Ordering::Acquire);
    let waiting = req_prod.wrapping_sub(*rsp_prod);
    if waiting > BLK_RING_SLOTS {
        return Round::Overrun;
    }
    for _ in 0..waiting {
        let at = blk_slot(*rsp_prod);
        // SAFETY: `blk_slot` stays inside the page (checked in `abi::pv`); 8-byte aligned.
        let req = unsafe { read_slot(page.add(at)) };
        let rsp = BlkResponse {
            id: req.id,
            status: handle(hv, domid, region, &req),
            op: req.op,
            reserved: [0; 51],
        };
        // SAFETY: as above.
        unsafe { write_slot(page.add(at), rsp.as_bytes()) };
        *rsp_prod = rsp_prod.wrapping_add(1);
        // The response is in its slot before `rsp_prod` says so.
        compiler_fence(Ordering::Release);
        // SAFETY: offset 4 of the mapped page, aligned.
        unsafe { core::ptr::write_volatile(page.add(RSP_PROD).cast::<u32>(), *rsp_prod) };
    }
    Round::Answered(waiting)
}

/// Whether the ring at `page`, just mapped, starts empty as `ABI.md` requires (`req_prod`
/// 0); if so, sets its `rsp_prod` to 0 too, the count dom0 starts from. A frontend that
/// connects again must not hand over a ring with old requests in it: dom0 would serve them.
///
/// # Safety
/// As for [`serve`].
pub(super) unsafe fn fresh(page: *mut u8) -> bool {
    // SAFETY: offset 0 of the mapped page, aligned (the caller's promise).
    let req_prod = unsafe { core::ptr::read_volatile(page.cast::<u32>()) };
    if req_prod != 0 {
        return false;
    }
    // SAFETY: offset 4 of the mapped page, aligned.
    unsafe { core::ptr::write_volatile(page.add(RSP_PROD).cast::<u32>(), 0) };
    true
}

/// A copy of the request in the slot at `at`.
///
/// # Safety
/// `at` must be valid for volatile reads of [`BLK_SLOT`] bytes and 8-byte aligned.
unsafe fn read_slot(at: *const u8) -> BlkRequest {
    let mut bytes = [0u8; BLK_SLOT];
    for (i, chunk) in bytes.chunks_exact_mut(8).enumerate() {
        // SAFETY: inside the slot, aligned (the caller's promise).
        let w = unsafe { core::ptr::read_volatile(at.cast::<u64>().add(i)) };
        chunk.copy_from_slice(&w.to_le_bytes());
    }
    // Sizes match (`BlkRequest` is a slot, asserted in `abi::pv`); any bytes are a request.
    BlkRequest::read_from_bytes(&bytes).unwrap_or_else(|_| BlkRequest::new_zeroed())
}

/// Writes `bytes` (a slot's worth) into the slot at `at`.
///
/// # Safety
/// As [`read_slot`], for writes.
unsafe fn write_slot(at: *mut u8, bytes: &[u8]) {
    for (i, chunk) in bytes.chunks_exact(8).take(BLK_SLOT / 8).enumerate() {
        let w = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
        // SAFETY: inside the slot, aligned (the caller's promise).
        unsafe { core::ptr::write_volatile(at.cast::<u64>().add(i), w) };
    }
}

/// Does one request: its response's status.
fn handle<H: VbdHypercalls>(hv: &H, domid: u32, region: &dyn Sectors, req: &BlkRequest) -> i32 {
    let write = match req.op {
        BLK_OP_READ => false,
        BLK_OP_WRITE => true,
        // Writes are on the disk when they are answered: nothing is left to flush.
        BLK_OP_FLUSH => return if req.nr_sectors == 0 { BLK_RSP_OKAY } else { BLK_RSP_ERROR },
        _ => return BLK_RSP_EOPNOTSUPP,
    };
    if req.nr_sectors == 0 || req.nr_sectors > BLK_MAX_SECTORS {
        return BLK_RSP_ERROR;
    }
    let fits = req
        .sector
        .checked_add(u64::from(req.nr_sectors))
        .is_some_and(|end| end <= region.sectors());
    if !fits {
        return BLK_RSP_ERROR;
    }
    let mut data = [0u8; PAGE];
    // At most 8 sectors: a page.
    let len = usize::from(req.nr_sectors) * BLK_SECTOR as usize;
    let buf = &mut data[..len];
    let done = if write {
        hv.grant_copy_from(domid, req.gref, 0, buf).is_ok_and(|n| n == len as u64)
            && region.write(req.sector, buf).is_ok()
    } else {
        region.read(req.sector, buf).is_ok()
            && hv.grant_copy_to(domid, req.gref, 0, buf).is_ok_and(|n| n == len as u64)
    };
    if done { BLK_RSP_OKAY } else { BLK_RSP_ERROR }
}
