//! A warm `predict` allocates no buffers: every working array lives in per-thread scratch
//! that grows on the first call and is reused after (issue 7: "no allocation per batch").
//! Its own test binary, because it installs a counting global allocator.

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use cai_model::kernels::Precision;
use cai_model::{init, AstroMae, Config, Model};

/// Allocations of at least this many bytes count as buffers. The output (4 bytes per
/// galaxy) and the thread pool's small bookkeeping stay below it.
const BUFFER: usize = 4096;

struct Counting;

static BIG: AtomicUsize = AtomicUsize::new(0);
static SIZES: Mutex<Vec<usize>> = Mutex::new(Vec::new());
static RECORD: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn note(size: usize) {
    if size >= BUFFER {
        BIG.fetch_add(1, Ordering::Relaxed);
        if RECORD.load(Ordering::Relaxed) {
            // try_lock: an allocation made while the lock is held (formatting the failure
            // message) must not wait on it; `push` stays within the reserved capacity.
            if let Ok(mut v) = SIZES.try_lock() {
                if v.len() < v.capacity() {
                    v.push(size);
                }
            }
        }
    }
}

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn warm_predict_allocates_no_buffers() {
    let cfg = Config {
        depth: 2,
        ..Config::astromae()
    };
    let f32_model = AstroMae::load(&init::astromae_weights(5, &cfg), "seeded").unwrap();
    let n = 12;
    let img: Vec<f32> = (0..n * cfg.channels * cfg.image * cfg.image)
        .map(|i| ((i * 7919) % 1000) as f32 * 1e-3)
        .collect();
    let mag: Vec<f32> = (0..n * 5).map(|i| 15.0 + (i % 7) as f32).collect();
    SIZES.lock().unwrap().reserve(64);
    // One worker, so the same thread's scratch serves every call.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    for precision in [Precision::F32, Precision::Int16] {
        let mut model = f32_model.clone();
        model.set_precision(precision).unwrap();
        pool.install(|| warm_call(&model, &img, &mag, n, precision));
    }
}

/// Two `predict` calls; the second must allocate no buffer.
fn warm_call(model: &AstroMae, img: &[f32], mag: &[f32], n: usize, precision: Precision) {
    let first = model.predict(img, mag, n).unwrap();
    let before = BIG.load(Ordering::Relaxed);
    RECORD.store(true, Ordering::Relaxed);
    let again = model.predict(img, mag, n).unwrap();
    RECORD.store(false, Ordering::Relaxed);
    let buffers = BIG.load(Ordering::Relaxed) - before;
    assert_eq!(first, again);
    assert_eq!(
        buffers,
        0,
        "a warm {precision} predict of {n} galaxies allocated {buffers} buffers of these sizes (bytes): {:?}",
        SIZES.lock().unwrap()
    );
}
