//! A checker's report (`POST /v1/checking/reports`): any bytes decode or are refused with
//! the indexer's decoder; a decoded report from an assigned checker is taken or refused
//! whole by the checking protocol in an open period, never a panic, and a taken report
//! credits no more results than it holds.
#![no_main]

use std::sync::OnceLock;

use gpumesh_checking::{Checking, Target};
use gpumesh_indexer::decode_body;
use gpumesh_types::{Address, B256, CheckReport, CheckingParams, ContainerRef, GpuModel};
use libfuzzer_sys::fuzz_target;

const GENESIS_MS: u64 = 1_000_000;

fn world() -> &'static (Checking, Vec<Address>) {
    static WORLD: OnceLock<(Checking, Vec<Address>)> = OnceLock::new();
    WORLD.get_or_init(|| {
        let checkers: Vec<Address> = (1..=5).map(Address::with_last_byte).collect();
        let mut checking = Checking::new(CheckingParams::local(checkers.clone()), GENESIS_MS, []);
        let targets = (0..8u8)
            .map(|i| Target {
                container: ContainerRef {
                    host: Address::repeat_byte(0x40 + i / 4),
                    index: u16::from(i % 4),
                },
                endpoint: format!("http://127.0.0.1:9/{i}"),
                gpu: GpuModel::H100,
                simulated: true,
                capacity_due: i % 2 == 0,
                delivery: (i % 3 == 0).then(|| gpumesh_types::DeliveryProbe {
                    lease: gpumesh_types::LeaseId(u64::from(i)),
                    service: None,
                }),
            })
            .collect();
        checking.begin_period(
            0,
            0,
            B256::repeat_byte(1),
            targets,
            B256::repeat_byte(7),
            "http://indexer/v1/decoy",
        );
        (checking, checkers)
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&who, body)) = data.split_first() else {
        return;
    };
    let Ok(report) = decode_body::<CheckReport>(body) else {
        return;
    };
    let (checking, checkers) = world();
    let mut checking = checking.clone();
    let checker = checkers[who as usize % checkers.len()];
    let now = GENESIS_MS + u64::from(who) * 1_000;
    if let Ok(accepted) = checking.report(checker, &report, now) {
        assert!(accepted as usize <= report.results.len());
    }
});
