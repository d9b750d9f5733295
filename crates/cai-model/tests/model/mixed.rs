//! Per-layer precision plans and `--precision auto` ([`cai_model::mixed`]).

use cai_model::kernels::Precision;
use cai_model::mixed::{self, AutoOptions, Calibration, Reuse};
use cai_model::{formula, init, AstroMae, Config, Model, PlanLayer, PrecisionPlan};

use super::{inputs, small};

fn seeded(cfg: &Config, seed: u64) -> AstroMae {
    AstroMae::load(&init::astromae_weights(seed, cfg), "seeded").unwrap()
}

fn bits(z: &[f32]) -> Vec<u32> {
    z.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn all_f32_plan_gives_the_same_bits_as_f32() {
    let cfg = small();
    let model = seeded(&cfg, 3);
    let (img, mag) = inputs(5, &cfg, 1);
    let z = model.predict(&img, &mag, 5).unwrap();
    let mut m = model.clone();
    m.set_plan(&PrecisionPlan::f32(cfg.depth)).unwrap();
    assert_eq!(bits(&m.predict(&img, &mag, 5).unwrap()), bits(&z));
    assert_eq!(m.precision(), Some(Precision::F32));
    // A uniform plan is exactly what set_precision did before plans existed.
    for p in [Precision::Bf16, Precision::Int8, Precision::Int16] {
        let mut a = model.clone();
        a.set_precision(p).unwrap();
        let mut b = model.clone();
        b.set_plan(&PrecisionPlan::uniform(p, cfg.depth)).unwrap();
        assert_eq!(a.precision(), Some(p));
        assert_eq!(
            bits(&a.predict(&img, &mag, 5).unwrap()),
            bits(&b.predict(&img, &mag, 5).unwrap())
        );
    }
}

#[test]
fn lowering_one_layer_changes_only_that_layer() {
    let cfg = small();
    let model = seeded(&cfg, 4);
    let (img, mag) = inputs(6, &cfg, 2);
    let z = model.predict(&img, &mag, 6).unwrap();
    let lone = |l: PlanLayer, p: Precision| {
        let mut plan = PrecisionPlan::f32(cfg.depth);
        plan.set(l, p);
        let mut m = model.clone();
        m.set_plan(&plan).unwrap();
        assert_eq!(m.plan(), &plan);
        assert_eq!(m.precision(), None);
        m.predict(&img, &mag, 6).unwrap()
    };
    let mut seen = Vec::new();
    for l in PlanLayer::all(cfg.depth) {
        // The attention products (no weights) run in f32, bf16 or int16, not int8; even
        // blocks try bf16, odd ones int16.
        let p = if let PlanLayer::Attn(b) = l {
            let mut plan = PrecisionPlan::f32(cfg.depth);
            plan.set(l, Precision::Int8);
            let err = model.clone().set_plan(&plan).err().map(|e| e.to_string());
            assert!(
                err.as_deref()
                    .is_some_and(|e| e.contains("f32, bf16 or int16, not int8")),
                "{err:?}"
            );
            if b % 2 == 0 {
                Precision::Bf16
            } else {
                Precision::Int16
            }
        } else {
            Precision::Int8
        };
        let zl = lone(l, p);
        let dz = mixed::max_abs_diff(&z, &zl);
        assert!(dz > 0.0, "{l}: lowering it changed nothing");
        // Deterministic: the same plan gives the same bits.
        assert_eq!(bits(&zl), bits(&lone(l, p)), "{l}");
        // Each layer moves z its own way.
        assert!(!seen.contains(&bits(&zl)), "{l} moved z like another layer");
        seen.push(bits(&zl));
    }
    // Two layers lowered together: a mix of both, not either alone.
    let mut plan = PrecisionPlan::f32(cfg.depth);
    plan.set(PlanLayer::Fc1(0), Precision::Int8);
    plan.set(PlanLayer::Proj(1), Precision::Int8);
    let mut m = model.clone();
    m.set_plan(&plan).unwrap();
    let z2 = m.predict(&img, &mag, 6).unwrap();
    assert_ne!(bits(&z2), bits(&lone(PlanLayer::Fc1(0), Precision::Int8)));
    assert_ne!(bits(&z2), bits(&lone(PlanLayer::Proj(1), Precision::Int8)));
    // Converting further is refused, and leaves the model as it was.
    let mut plan3 = plan.clone();
    plan3.set(PlanLayer::Fc1(0), Precision::Int16);
    assert!(m.set_plan(&plan3).is_err());
    assert_eq!(m.plan(), &plan);
    // A plan of the wrong depth is refused.
    assert!(m.set_plan(&PrecisionPlan::f32(cfg.depth + 1)).is_err());
}

#[test]
fn smoothing_keeps_f32_results_and_is_recorded() {
    let cfg = small();
    let model = seeded(&cfg, 5);
    let (img, mag) = inputs(4, &cfg, 3);
    let z = model.predict(&img, &mag, 4).unwrap();
    let stats = model.layer_norm_absmax(&img, &mag, 4).unwrap();
    assert_eq!(stats.len(), cfg.depth);
    assert!(stats[0][0].iter().all(|v| *v > 0.0) && stats[1][1].len() == cfg.dim);
    let w = model.input_channel_absmax(PlanLayer::Fc1(1)).unwrap();
    assert!(model.input_channel_absmax(PlanLayer::Proj(1)).is_none());
    let s = mixed::smoothing_factors(&stats[1][1], &w, mixed::SMOOTH_ALPHA);
    // In f32 smoothing is the same function: z moves by rounding only.
    let mut plan = PrecisionPlan::f32(cfg.depth);
    plan.set_smoothing(PlanLayer::Fc1(1), Some(s));
    let mut m = model.clone();
    m.set_plan(&plan).unwrap();
    let zs = m.predict(&img, &mag, 4).unwrap();
    assert!(mixed::max_abs_diff(&z, &zs) < 1e-4);
    assert!(m.plan().smoothing(PlanLayer::Fc1(1)).is_some());
    // Bad factors are refused before anything changes.
    let mut bad = PrecisionPlan::f32(cfg.depth);
    bad.set_smoothing(PlanLayer::Qkv(0), Some(vec![1.0; 3]));
    assert!(model.clone().set_plan(&bad).is_err());
}

/// GPTQ's codes through a plan: the int8 layer gets exactly those integers (same results
/// as RTN when the codes are RTN's), a plan with them is recorded, and codes of the wrong
/// length are refused before anything changes.
#[test]
fn gptq_codes_through_a_plan() {
    let cfg = small();
    let model = seeded(&cfg, 6);
    let (img, mag) = inputs(6, &cfg, 4);
    let z = model.predict(&img, &mag, 6).unwrap();
    let grams = model.layer_input_grams(&img, &mag, 6).unwrap();
    assert_eq!(grams.len(), cfg.depth);
    assert_eq!(grams[0][3].len(), cfg.mlp * cfg.mlp);
    let l = PlanLayer::Fc2(0);
    let codes = model.gptq_codes(l, &grams[0][3], None).unwrap();
    assert_eq!(codes.len(), cfg.mlp * cfg.dim);
    assert_eq!(model.gptq_codes(l, &grams[0][3], None).unwrap(), codes);
    let run = |g: Option<Vec<i8>>| {
        let mut plan = PrecisionPlan::f32(cfg.depth);
        plan.set(l, Precision::Int8);
        plan.set_gptq(l, g);
        let mut m = model.clone();
        m.set_plan(&plan).unwrap();
        assert_eq!(m.plan(), &plan);
        m.predict(&img, &mag, 6).unwrap()
    };
    // RTN's codes given explicitly are plain int8.
    let (w, scales, k, n) = model.study_layer_weights(l).unwrap();
    let sc: Vec<f32> = (0..n)
        .map(|j| (0..k).fold(0.0f32, |m, kk| m.max(w[kk * n + j].abs())) / 127.0)
        .collect();
    assert_eq!(scales, sc);
    let rtn = cai_model::gptq::rtn_int8(&w, n, &sc);
    assert_eq!(bits(&run(Some(rtn))), bits(&run(None)));
    let zg = run(Some(codes.clone()));
    assert_ne!(bits(&zg), bits(&run(None)));
    assert!(mixed::max_abs_diff(&z, &zg) < 0.05);
    // The codes are what the layer holds.
    let mut plan = PrecisionPlan::f32(cfg.depth);
    plan.set(l, Precision::Int8);
    plan.set_gptq(l, Some(codes.clone()));
    let mut m = model.clone();
    m.set_plan(&plan).unwrap();
    let (wq, ..) = m.study_layer_weights(l).unwrap();
    for (i, (a, c)) in wq.iter().zip(&codes).enumerate() {
        assert_eq!(*a, f32::from(*c) * sc[i % n], "weight {i}");
    }
    let mut bad = plan.clone();
    bad.set_gptq(l, Some(codes[1..].to_vec()));
    assert!(model.clone().set_plan(&bad).is_err());
    // Smoothed codes: the same layer smoothed.
    let stats = model.layer_norm_absmax(&img, &mag, 6).unwrap();
    let f = mixed::smoothing_factors(
        &stats[0][1],
        &model.input_channel_absmax(PlanLayer::Fc1(0)).unwrap(),
        mixed::SMOOTH_ALPHA,
    );
    let sc = model
        .gptq_codes(PlanLayer::Fc1(0), &grams[0][2], Some(&f))
        .unwrap();
    assert_eq!(sc.len(), cfg.dim * cfg.mlp);
    // They are GPTQ's codes for the layer as `set_plan` smooths it (the same f32 weights,
    // the inputs' Gram matrix divided by the factors), found without a copy of the model.
    let mut smooth = PrecisionPlan::f32(cfg.depth);
    smooth.set_smoothing(PlanLayer::Fc1(0), Some(f.clone()));
    let mut smoothed = model.clone();
    smoothed.set_plan(&smooth).unwrap();
    let (ws, scs, k1, n1) = smoothed.study_layer_weights(PlanLayer::Fc1(0)).unwrap();
    let h: Vec<f64> = (0..k1 * k1)
        .map(|i| grams[0][2][i] / (f64::from(f[i / k1]) * f64::from(f[i % k1])))
        .collect();
    assert_eq!(
        cai_model::gptq::gptq_int8(&ws, k1, n1, &h, &scs).unwrap(),
        sc
    );
    assert!(model
        .gptq_codes(PlanLayer::Fc1(0), &grams[0][2][1..], Some(&f))
        .is_err());
    assert!(model
        .gptq_codes(PlanLayer::Proj(0), &grams[0][1], Some(&f))
        .is_err());
    assert!(smoothed
        .gptq_codes(PlanLayer::Fc1(0), &grams[0][2], None)
        .is_ok());
    assert!(model
        .gptq_codes(PlanLayer::Cnn, &grams[0][2], None)
        .is_err());
}

/// `auto` with int8 and GPTQ on a small model: GPTQ is tried for every block layer, the
/// chosen plan (codes and all) survives the stored JSON, and converting a fresh model to it
/// gives the error `choose` reported.
#[test]
fn auto_with_gptq_stores_and_reapplies_its_codes() {
    let cfg = small();
    let model = seeded(&cfg, 8);
    let (img, mag) = inputs(6, &cfg, 5);
    let cal = Calibration {
        images: &img,
        magnitudes: &mag,
        n: 6,
    };
    let opts = AutoOptions {
        max_dz: 1.0,
        candidates: vec![Precision::Int8],
        rate_seconds: 0.05,
        hold_out: false,
        ..AutoOptions::default()
    };
    let ch = mixed::choose(&model, &cal, &opts).unwrap();
    // Every block layer: unsmoothed, and smoothed for qkv/fc1 (when int8 is faster here).
    let rate = |p: Precision| {
        ch.rates
            .iter()
            .find(|r| r.precision == p)
            .map_or(0.0, |r| r.gflops)
    };
    if rate(Precision::Int8) > 1.03 * rate(Precision::F32) {
        assert_eq!(ch.gptq_tried, 6 * cfg.depth);
        assert!(ch.gptq_used <= 4 * cfg.depth);
    }
    let json = serde_json::to_string(&ch).unwrap();
    let back: mixed::AutoChoice = serde_json::from_str(&json).unwrap();
    assert_eq!(back.plan, ch.plan);
    let mut m = model.clone();
    m.set_plan(&back.plan).unwrap();
    let z = model.predict(&img, &mag, 6).unwrap();
    let dz = mixed::max_abs_diff(&z, &m.predict(&img, &mag, 6).unwrap());
    assert_eq!(dz, ch.max_dz);
}

/// `auto` on the full-size formula model (the committed parity fixture's): the chosen mix,
/// measured again here, is within the bound, and what `choose` reports for it.
#[test]
fn auto_mix_is_within_the_bound_on_the_formula_model() {
    let cfg = Config::astromae();
    let model = AstroMae::load(&formula::weights(&cfg), "formula").unwrap();
    let n = 4;
    let (img, mag) = formula::inputs(n, cfg.channels, cfg.image);
    let cal = Calibration {
        images: &img,
        magnitudes: &mag,
        n,
    };
    let opts = AutoOptions {
        max_dz: 1e-3,
        // int16 only (with and without smoothing) keeps the test to ~75 full-size runs.
        candidates: vec![Precision::Int16],
        smoothing: true,
        gptq: true,
        rate_seconds: 0.2,
        hold_out: true,
    };
    let choice = mixed::choose(&model, &cal, &opts).unwrap();
    println!(
        "auto: {} | max |Δz| {:.2e} | GEMM speed-up est. {:.2} | smoothing tried {} helped {} used {}",
        choice.plan.summary(),
        choice.max_dz,
        choice.est_gemm_speedup,
        choice.smoothing_tried,
        choice.smoothing_helped,
        choice.smoothing_used
    );
    assert!(choice.max_dz <= opts.max_dz);
    // Half the galaxies were held out of the choice, and the mix is within the bound there.
    assert_eq!(choice.held_out, n / 2);
    assert!(choice.held_out_max_dz.is_some_and(|d| d <= opts.max_dz));
    assert!(choice.target > 0.0 && choice.target <= opts.max_dz);
    let z = model.predict(&img, &mag, n).unwrap();
    let again = mixed::plan_dz(&model, &choice.plan, &cal, &z).unwrap();
    assert_eq!(again, choice.max_dz);
    // Every lone-layer measurement of a precision faster than f32 is recorded.
    let faster = choice
        .rates
        .iter()
        .filter(|r| r.precision != Precision::F32)
        .count();
    assert!(choice.sensitivities.len() <= faster * PlanLayer::all(cfg.depth).len());
    // No mix may hold a layer in a precision whose error alone passes the bound.
    for s in &choice.sensitivities {
        let best = s.smoothed_max_dz.map_or(s.max_dz, |v| v.min(s.max_dz));
        if best > opts.max_dz {
            let l = PlanLayer::all(cfg.depth)
                .into_iter()
                .find(|l| l.to_string() == s.layer)
                .unwrap();
            assert_ne!(choice.plan.get(l), s.precision, "{}", s.layer);
        }
    }
}

#[test]
fn stored_plan_is_reused_and_recomputed_when_the_model_changes() {
    let cfg = Config {
        depth: 1,
        ..Config::astromae()
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let write = |seed: u64| {
        let w = init::astromae_weights(seed, &cfg);
        let bytes = w.to_safetensors(w.metadata()).unwrap();
        std::fs::write(&path, &bytes).unwrap();
        (AstroMae::load(&w, "m").unwrap(), bytes)
    };
    let (img, mag) = inputs(3, &cfg, 9);
    let cal = Calibration {
        images: &img,
        magnitudes: &mag,
        n: 3,
    };
    let opts = AutoOptions {
        candidates: vec![Precision::Int16],
        smoothing: false,
        rate_seconds: 0.05,
        ..AutoOptions::default()
    };
    let (model, bytes) = write(1);
    let (first, why) = mixed::auto_for_file(&path, &bytes, &model, &cal, &opts).unwrap();
    assert!(
        matches!(why, Reuse::Chosen(ref r) if r.contains("no stored plan")),
        "{why:?}"
    );
    let stored = mixed::plan_path(&path);
    assert!(stored.exists());
    assert_eq!(mixed::read_stored(&stored).unwrap().as_ref(), Some(&first));
    assert_eq!(first.model_sha256, mixed::model_sha256(&bytes));
    let (second, why) = mixed::auto_for_file(&path, &bytes, &model, &cal, &opts).unwrap();
    assert_eq!(why, Reuse::Reused);
    assert_eq!(second, first);
    // Another bound: chosen again.
    let tighter = AutoOptions {
        max_dz: 1e-9,
        ..opts.clone()
    };
    let (t, why) = mixed::auto_for_file(&path, &bytes, &model, &cal, &tighter).unwrap();
    assert!(
        matches!(why, Reuse::Chosen(ref r) if r.contains("chosen for")),
        "{why:?}"
    );
    assert!(t.choice.max_dz <= 1e-9);
    // New weights in the same file: chosen again, for the new hash.
    let (model2, bytes2) = write(2);
    let (third, why) = mixed::auto_for_file(&path, &bytes2, &model2, &cal, &opts).unwrap();
    assert!(
        matches!(why, Reuse::Chosen(ref r) if r.contains("SHA-256")),
        "{why:?}"
    );
    assert_eq!(third.model_sha256, mixed::model_sha256(&bytes2));
    assert_ne!(third.model_sha256, first.model_sha256);
    // A damaged file is reported, then replaced.
    std::fs::write(&stored, b"{not json").unwrap();
    assert!(mixed::read_stored(&stored).is_err());
    let (_, why) = mixed::auto_for_file(&path, &bytes2, &model2, &cal, &opts).unwrap();
    assert!(
        matches!(why, Reuse::Chosen(ref r) if r.contains("not a stored")),
        "{why:?}"
    );
}
