//! CPU clocks (the calling thread's, the whole process's), for the benchmarks: time spent
//! descheduled by other load does not count, so figures from a shared machine stay
//! comparable.

/// Seconds of CPU time the calling thread has used, to the nanosecond
/// (`clock_gettime(CLOCK_THREAD_CPUTIME_ID)`, which includes the slice running now;
/// `/proc/thread-self/schedstat` advances only at scheduler ticks, too coarse for the
/// tens of milliseconds the benchmarks' rounds last). `None` where there is no such clock.
pub fn thread_cpu_seconds() -> Option<f64> {
    #[cfg(unix)]
    {
        cpu_clock(libc::CLOCK_THREAD_CPUTIME_ID)
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Seconds of CPU time the whole process (all its threads) has used, to the nanosecond
/// (`clock_gettime(CLOCK_PROCESS_CPUTIME_ID)`). `None` where there is no such clock.
pub fn process_cpu_seconds() -> Option<f64> {
    #[cfg(unix)]
    {
        cpu_clock(libc::CLOCK_PROCESS_CPUTIME_ID)
    }
    #[cfg(not(unix))]
    {
        None
    }
}

#[cfg(unix)]
fn cpu_clock(id: libc::clockid_t) -> Option<f64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(id, &mut ts) };
    (rc == 0).then_some(ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advances_with_work() {
        let Some(t0) = thread_cpu_seconds() else {
            return;
        };
        let mut x = 1.0f64;
        for i in 0..2_000_000 {
            x = std::hint::black_box(x * 1.000_000_1 + i as f64 * 1e-12);
        }
        let t1 = thread_cpu_seconds().expect("clock worked once");
        assert!(t1 > t0, "{t0} -> {t1} after {x}");
    }
}
