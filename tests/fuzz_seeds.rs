//! Replays every committed fuzz seed (`fuzz/seeds/<target>/`) through the same
//! invariant checks the fuzz targets run (`outpost::fuzzing`), so CI exercises them on
//! stable without libFuzzer.

use outpost::fuzzing;
use std::path::Path;

fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target);
    let mut seeds: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            (
                path.file_name().unwrap().to_string_lossy().into_owned(),
                bytes,
            )
        })
        .collect();
    seeds.sort();
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    seeds
}

fn replay(target: &str, check: fn(&[u8])) {
    for (name, bytes) in seeds(target) {
        if std::panic::catch_unwind(|| check(&bytes)).is_err() {
            panic!("fuzz seed {target}/{name} breaks an invariant");
        }
    }
}

#[test]
fn smtp_command_seeds() {
    replay("smtp_command", fuzzing::smtp_command);
}

#[test]
fn sasl_seeds() {
    replay("sasl", fuzzing::sasl);
}

#[test]
fn message_headers_seeds() {
    replay("message_headers", fuzzing::message_headers);
}

#[test]
fn api_json_seeds() {
    replay("api_json", fuzzing::api_json);
}

#[test]
fn data_receiver_seeds() {
    replay("data_receiver", fuzzing::data_receiver);
}

/// Each DATA seed body again under every output limit and a few more chunkings than
/// the one its header picks.
#[test]
fn data_receiver_seed_bodies_under_all_limits_and_chunkings() {
    for (name, bytes) in seeds("data_receiver") {
        let k = usize::from(bytes[1] % 8);
        let body = &bytes[2 + k..];
        for limit in fuzzing::DATA_LIMITS {
            for chunks in [&[1][..], &[2, 3], &[0, 5], &[7], &[64], &[1, 0, 13, 2]] {
                let run =
                    std::panic::catch_unwind(|| fuzzing::data_receiver_checks(body, limit, chunks));
                assert!(
                    run.is_ok(),
                    "data_receiver/{name} with limit {limit}, chunks {chunks:?}"
                );
            }
        }
    }
}
