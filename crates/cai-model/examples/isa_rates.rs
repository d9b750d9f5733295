//! The rate of each multiply instruction the x86 kernels are built on, alone in registers
//! (24 independent accumulators, so latency does not count): f32 FMA, `vpdpbusd` (u8 x i8,
//! int8), `vpdpwssd` (i16 pairs, int16) and `vdpbf16ps` (bf16 pairs), each on ymm and zmm,
//! in instructions and multiply-adds per second of wall time on the calling thread. What a
//! precision's GEMM could reach on this core, against which `gemm_speed` and `cai bench`
//! are read. Pin it (`taskset -c 0`); instructions the CPU lacks are skipped:
//! `cargo run --release -p cai-model --example isa_rates [seconds per instruction]`
#![allow(clippy::print_stdout)]

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;
    use std::time::Instant;

    /// Independent accumulators per loop.
    const N: usize = 24;

    /// Runs `op` on [`N`] accumulators for about `seconds`; prints instructions and
    /// multiply-adds (`macs` per instruction) per second.
    #[inline(always)]
    fn rate<T: Copy>(name: &str, macs: u64, seconds: f64, init: T, op: impl Fn(T, T) -> T) {
        let x = std::hint::black_box(init);
        let mut acc = [init; N];
        let mut iters = 1u64 << 16;
        loop {
            let t = Instant::now();
            for _ in 0..iters {
                for a in acc.iter_mut() {
                    *a = op(*a, x);
                }
            }
            let s = t.elapsed().as_secs_f64();
            std::hint::black_box(&mut acc);
            if s >= seconds || iters >= 1 << 40 {
                let ips = (iters * N as u64) as f64 / s;
                println!(
                    "{name:>16}: {:6.2} G instructions/s, {:7.1} G multiply-adds/s",
                    ips / 1e9,
                    ips * macs as f64 / 1e9
                );
                return;
            }
            iters *= 2;
        }
    }

    /// Caller guarantees: AVX-512F/BW/VL and FMA are present.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,avx2")]
    unsafe fn fma(seconds: f64) {
        rate("vfmadd ymm", 8, seconds, _mm256_set1_ps(1.0), |a, x| {
            _mm256_fmadd_ps(x, x, a)
        });
        rate("vfmadd zmm", 16, seconds, _mm512_set1_ps(1.0), |a, x| {
            _mm512_fmadd_ps(x, x, a)
        });
    }

    /// Caller guarantees: AVX-512F/BW/VL/VNNI are present.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn vnni(seconds: f64) {
        rate("vpdpbusd ymm", 32, seconds, _mm256_set1_epi32(1), |a, x| {
            _mm256_dpbusd_epi32(a, x, x)
        });
        rate("vpdpbusd zmm", 64, seconds, _mm512_set1_epi32(1), |a, x| {
            _mm512_dpbusd_epi32(a, x, x)
        });
        rate("vpdpwssd ymm", 16, seconds, _mm256_set1_epi32(1), |a, x| {
            _mm256_dpwssd_epi32(a, x, x)
        });
        rate("vpdpwssd zmm", 32, seconds, _mm512_set1_epi32(1), |a, x| {
            _mm512_dpwssd_epi32(a, x, x)
        });
    }

    /// Caller guarantees: AVX-512F/BW/VL/BF16 are present.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    unsafe fn bf16(seconds: f64) {
        let one = _mm512_set1_epi16(0x3f80);
        // SAFETY: same-size plain-bits vector types (bf16 pairs as 32 x u16).
        let (bz, by) = unsafe {
            (
                std::mem::transmute::<__m512i, __m512bh>(one),
                std::mem::transmute::<__m256i, __m256bh>(_mm512_castsi512_si256(one)),
            )
        };
        rate("vdpbf16ps ymm", 16, seconds, _mm256_set1_ps(1.0), |a, _| {
            _mm256_dpbf16_ps(a, by, by)
        });
        rate("vdpbf16ps zmm", 32, seconds, _mm512_set1_ps(1.0), |a, _| {
            _mm512_dpbf16_ps(a, bz, bz)
        });
    }

    pub fn main(seconds: f64) {
        let base = is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx2");
        if !base || !is_x86_feature_detected!("fma") {
            println!("no AVX-512F/BW/VL with FMA on this CPU: nothing to measure");
            return;
        }
        // SAFETY: the features each function enables were confirmed just above.
        unsafe {
            fma(seconds);
            if is_x86_feature_detected!("avx512vnni") {
                vnni(seconds);
            } else {
                println!("no AVX-512 VNNI: vpdpbusd and vpdpwssd skipped");
            }
            if is_x86_feature_detected!("avx512bf16") {
                bf16(seconds);
            } else {
                println!("no AVX-512 BF16: vdpbf16ps skipped");
            }
        }
    }
}

fn main() {
    let seconds: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.3);
    #[cfg(target_arch = "x86_64")]
    x86::main(seconds);
    #[cfg(not(target_arch = "x86_64"))]
    println!("x86-64 only ({seconds} s per instruction asked)");
}
