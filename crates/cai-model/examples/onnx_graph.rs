//! Prints tract's decluttered graph of an ONNX model (batch dimension `N`), one node a
//! line: what the ONNX lowering sees. `--typed`: before the declutter. `--profile`: runs the
//! plan `cai` runs (lowered onto CAI's kernels; `--tract` for tract's own) on 32 galaxies
//! (`PROFILE_N` for another batch) and prints the time per operator (`BY_NAME=1`: per node
//! name). `cargo run --release -p cai-model --features onnx --example onnx_graph -- X.onnx`
use cai_model::onnx::{Lowering, OnnxModel};
use tract_onnx::prelude::*;

fn main() -> TractResult<()> {
    let path = std::env::args()
        .nth(1)
        .expect("usage: onnx_graph MODEL.onnx");
    let bytes = std::fs::read(&path)?;
    let info = cai_model::onnx::OnnxInfo::read(&path, &bytes)?;
    if std::env::args().any(|a| a == "--profile") {
        let lowering = if std::env::args().any(|a| a == "--tract") {
            Lowering::Tract
        } else {
            Lowering::Native
        };
        let model = OnnxModel::load_with(&path, &bytes, lowering)?;
        println!("lowered: {:?}", model.lowered());
        return profile(model.plan(), &info);
    }
    let mut model = tract_onnx::onnx().model_for_path(&path)?;
    let n = model.symbols.sym("N");
    for (i, decl) in info.inputs.iter().enumerate() {
        let shape: Vec<TDim> = std::iter::once(TDim::from(n.clone()))
            .chain(
                decl.dims[1..]
                    .iter()
                    .map(|d| TDim::from(d.parse::<i64>().unwrap_or(1))),
            )
            .collect();
        model.set_input_fact(i, f32::fact(shape).into())?;
    }
    let typed = model.into_typed()?;
    let typed = if std::env::args().any(|a| a == "--typed") {
        typed
    } else {
        typed.into_decluttered()?
    };
    for id in typed.eval_order()? {
        let node = typed.node(id);
        let ins: Vec<String> = node
            .inputs
            .iter()
            .map(|o| format!("{}.{}", o.node, o.slot))
            .collect();
        println!(
            "#{id} {} [{}] {:?} <- {} => {:?}",
            node.op.name(),
            node.name,
            node.op.info()?,
            ins.join(","),
            node.outputs
                .iter()
                .map(|o| format!("{:?}", o.fact))
                .collect::<Vec<_>>()
        );
    }
    Ok(())
}

/// Runs `plan` on 32 (`PROFILE_N`) made-up galaxies 6 times and prints the time per
/// operator over the last 5.
fn profile(plan: &Arc<TypedRunnableModel>, info: &cai_model::onnx::OnnxInfo) -> TractResult<()> {
    let n: usize = std::env::var("PROFILE_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32);
    let inputs: TVec<TValue> = info
        .inputs
        .iter()
        .map(|d| {
            let shape: Vec<usize> = std::iter::once(n)
                .chain(d.dims[1..].iter().map(|x| x.parse().unwrap_or(1)))
                .collect();
            let len: usize = shape.iter().product();
            let v: Vec<f32> = (0..len)
                .map(|i| ((i * 7919) % 1000) as f32 / 1000.0)
                .collect();
            Tensor::from_shape(&shape, &v).map(|t| t.into_tvalue())
        })
        .collect::<TractResult<_>>()?;
    let mut times: std::collections::BTreeMap<String, (f64, usize)> = Default::default();
    let mut state = plan.spawn()?;
    let t0 = std::time::Instant::now();
    for round in 0..6 {
        state.run_plan_with_eval(inputs.clone(), |ctx, st, node, input| {
            let t = std::time::Instant::now();
            let out = tract_onnx::tract_core::plan::eval(ctx, st, node, input);
            if round > 0 {
                let key = if std::env::var("BY_NAME").is_ok() {
                    let name: String = node.name.chars().filter(|c| !c.is_ascii_digit()).collect();
                    format!("{} {}", node.op().name(), name)
                } else {
                    node.op().name().to_string()
                };
                let e = times.entry(key).or_default();
                e.0 += t.elapsed().as_secs_f64();
                e.1 += 1;
            }
            out
        })?;
    }
    let total: f64 = times.values().map(|v| v.0).sum();
    let mut rows: Vec<_> = times.into_iter().collect();
    rows.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0));
    for (op, (s, c)) in rows {
        println!(
            "{op:60} {:8.2} ms/batch {:5.1}% ({c} calls)",
            s * 1e3 / 5.0,
            100.0 * s / total
        );
    }
    println!(
        "total {:.2} ms per batch of {n}: {:.1} galaxies/s (wall {:.2} s)",
        total * 1e3 / 5.0,
        5.0 * n as f64 / total,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
