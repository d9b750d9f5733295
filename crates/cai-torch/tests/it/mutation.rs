//! Byte-mutation smoke tests (a stand-in for fuzzing in CI): mutated files never panic.

use proptest::prelude::*;

use crate::forms::{dataset_pickle, dataset_storages};
use crate::util::{f32_storage, read_any, torch_zip, M, P, T};

fn checkpoint_pickle() -> Vec<u8> {
    let mut p = P::new();
    let lin = M::new("torch.nn.modules.linear.Linear")
        .param("weight", T::f32("0", &[2, 2]))
        .param("bias", T::f32("1", &[2]));
    let root = M::new("torch.nn.parallel.data_parallel.DataParallel").child(
        "module",
        M::new("torch.nn.modules.container.Sequential").child("0", lin),
    );
    p.module(&root);
    p.stop()
}

fn mutate(mut b: Vec<u8>, edits: &[(usize, u8, u8)]) -> Vec<u8> {
    for &(at, kind, v) in edits {
        if b.is_empty() {
            b.push(v);
            continue;
        }
        let at = at % b.len();
        match kind % 4 {
            0 => b[at] = v,
            1 => b[at] ^= 1 << (v % 8),
            2 => b.insert(at, v),
            _ => {
                b.remove(at);
            }
        }
    }
    b
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Mutate the pickle and rewrap it in a valid zip, so the pickle VM sees the damage.
    #[test]
    fn mutated_pickles_never_panic(edits in prop::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..8), which in 0..2u8) {
        let (pkl, storages) = if which == 0 {
            (checkpoint_pickle(), vec![("0", f32_storage(0, 4)), ("1", f32_storage(1, 2))])
        } else {
            (dataset_pickle(["0", "1", "2"]), dataset_storages())
        };
        read_any(&torch_zip(&mutate(pkl, &edits), &storages));
    }

    /// Mutate a file in torch's own layout (zip64 end records, data descriptors, `FB`
    /// padding): never a panic, and an index that is returned keeps its promises.
    #[test]
    fn mutated_torch_layout_zips_never_panic(edits in prop::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..8), n in 1usize..40) {
        let stem: String = "m".repeat(n);
        let bytes = mutate(crate::torchlike::torch_save_w(&stem, &[1.0, 2.0], crate::torchlike::Layout::default()), &edits);
        read_any(&bytes);
        if let Ok(index) = cai_torch::read_zip_index("m.pt", std::io::Cursor::new(&bytes)) {
            let mut spans: Vec<(u64, u64)> = index.entries.iter().map(|e| (e.header_offset, e.end())).collect();
            spans.sort();
            prop_assert!(spans.windows(2).all(|w| w[0].1 <= w[1].0));
            prop_assert!(spans.iter().all(|s| s.1 <= index.central_directory_offset));
            prop_assert!(index.central_directory_offset + index.central_directory_size <= bytes.len() as u64);
        }
    }

    /// Mutate the whole file (zip headers, CRCs, data).
    #[test]
    fn mutated_zips_never_panic(edits in prop::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..8)) {
        let bytes = torch_zip(&checkpoint_pickle(), &[("0", f32_storage(0, 4)), ("1", f32_storage(1, 2))]);
        read_any(&mutate(bytes, &edits));
    }
}
