//! Property tests: the trailer parser never panics and never reads past its bounds, whatever the
//! bytes, including arbitrary corruptions of a valid image.

use std::sync::OnceLock;

use image_loader::gvmi::parse_gvmi_bytes;
use proptest::prelude::*;
use test_fixtures::images::{gvmi, SAMPLE_CONFIG};

fn valid_image() -> &'static [u8] {
    static IMAGE: OnceLock<Vec<u8>> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        gvmi(dir.path(), "p.gvmi", SAMPLE_CONFIG).unwrap()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let _ = parse_gvmi_bytes(&bytes);
    }

    #[test]
    fn arbitrary_trailer_text_never_panics(
        head in proptest::collection::vec(any::<u8>(), 0..256),
        json in ".{0,64}",
        digits in "[0-9]{8}",
    ) {
        let mut bytes = head;
        bytes.extend_from_slice(json.as_bytes());
        bytes.extend_from_slice(digits.as_bytes());
        let _ = parse_gvmi_bytes(&bytes);
    }

    #[test]
    fn corrupted_images_never_panic(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut bytes = valid_image().to_vec();
        for (at, value) in edits {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len()));
        }
        let _ = parse_gvmi_bytes(&bytes);
    }
}

#[test]
fn the_valid_image_parses() {
    assert!(parse_gvmi_bytes(valid_image()).is_ok());
}
