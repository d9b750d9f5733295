//! Prints what cai-torch reads from a `.pt` file: `cargo run -p cai-torch --example pt_inspect -- FILE`.

use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: pt_inspect FILE.pt");
        return ExitCode::from(2);
    };
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {path}: {e}");
            return ExitCode::from(2);
        }
    };
    match cai_torch::read_checkpoint(&path, &bytes) {
        Ok(c) => {
            println!("form: {:?}", c.form);
            println!("classes: {:?}", c.classes);
            println!("locations: {:?}", c.locations);
            for (k, t) in &c.tensors {
                println!("{k}: {:?} {:?}", t.dtype, t.shape);
            }
            return ExitCode::SUCCESS;
        }
        Err(e) => eprintln!("not a checkpoint: {e}"),
    }
    match cai_torch::read_tensor_dataset(&path, &bytes) {
        Ok(ts) => {
            for (i, t) in ts.iter().enumerate() {
                println!("tensors[{i}]: {:?} {:?}", t.dtype, t.shape);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
