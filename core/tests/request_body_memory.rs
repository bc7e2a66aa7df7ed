//! Heap cost of reading a request body before admission, measured with a counting allocator
//! (its own test binary: the allocator sees only this test's allocations).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use tollgate_core::request::body as request_body;
use tollgate_core::Operation;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::SeqCst) + layout.size();
        PEAK.fetch_max(live, Ordering::SeqCst);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Peak heap growth (bytes) while `f` runs.
fn peak_growth(f: impl FnOnce()) -> usize {
    let before = LIVE.load(Ordering::SeqCst);
    PEAK.store(before, Ordering::SeqCst);
    f();
    PEAK.load(Ordering::SeqCst) - before
}

const MIB: usize = 1 << 20;

/// `{"messages":[0,0,…]}` of about `size` bytes.
fn zeros(size: usize) -> Vec<u8> {
    let mut body = br#"{"inferenceConfig":{"maxTokens":9000},"messages":[0"#.to_vec();
    while body.len() + 4 < size {
        body.extend_from_slice(b",0");
    }
    body.extend_from_slice(b"]}");
    body
}

/// `{"messages":{"0":0,"1":0,…}}`: one object with as many members as fit, the most names a
/// body of that size can make the duplicate check hold at once.
fn many_names(size: usize) -> Vec<u8> {
    let mut body = br#"{"messages":{"#.to_vec();
    let mut i = 0u64;
    while body.len() + 32 < size {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(format!("\"{i:x}\":0").as_bytes());
        i += 1;
    }
    body.extend_from_slice(b"}}");
    body
}

#[test]
fn a_64_mib_body_is_read_without_a_document_tree_and_names_cost_a_slice_each() {
    // One test, so nothing else allocates while it measures.
    let body = zeros(64 * MIB);
    let scan = peak_growth(|| {
        let read = request_body::scan(&body, Operation::Converse).unwrap();
        let out = read.output_limit(
            &body,
            "us.anthropic.claude-haiku-4-5-20251001-v1:0",
            Some(100),
        );
        assert_eq!(out.max_output_tokens, Some(100));
        // The clamp copies the body once; drop it inside the measurement.
        assert_eq!(out.rewritten.map(|b| b.len()), Some(body.len() - 1));
    });
    eprintln!(
        "64 MiB array of zeros ({} bytes): peak heap growth {} KiB while scanning and clamping",
        body.len(),
        scan / 1024
    );
    // The rewritten copy of the body, and nothing per value.
    assert!(scan < body.len() + MIB, "{scan}");

    let unclamped = peak_growth(|| {
        request_body::scan(&body, Operation::Converse).unwrap();
    });
    eprintln!("  scan alone: {} KiB", unclamped / 1024);
    assert!(unclamped < 64 * 1024, "{unclamped}");

    // What building a serde_json::Value cost (the previous reader), at 1/16 of the size.
    let small = zeros(4 * MIB);
    let tree = peak_growth(|| {
        let v: serde_json::Value = serde_json::from_slice(&small).unwrap();
        assert!(v.is_object());
    });
    eprintln!(
        "  serde_json::Value of a 4 MiB array of zeros: {} MiB ({}x the body; x16 for 64 MiB)",
        tree / MIB,
        tree / small.len()
    );

    // The worst case for the scanner: one huge object, whose names the duplicate check keeps.
    let body = many_names(64 * MIB);
    let names = peak_growth(|| {
        request_body::scan(&body, Operation::Converse).unwrap();
    });
    eprintln!(
        "64 MiB object of {} KiB names: peak heap growth {} MiB ({:.2}x the body)",
        body.len() / 1024,
        names / MIB,
        names as f64 / body.len() as f64
    );
    // One borrowed slice per member (24 bytes native, 12 on wasm32), plus the vector's growth.
    assert!(names < 4 * body.len(), "{names}");
}
