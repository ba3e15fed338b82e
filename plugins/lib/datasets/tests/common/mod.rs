//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// The committed fixtures (`tests/data`, made by `tests/data/make_fixtures.py`).
pub fn data(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("data")
        .join(rel)
}

/// Decodes a PNG: (width, height, channels, pixels).
pub fn decode_png(bytes: &[u8]) -> (u32, u32, usize, Vec<u8>) {
    let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    decoder.set_transformations(png::Transformations::EXPAND);
    let mut reader = decoder.read_info().expect("a PNG header");
    let mut buf = vec![0; reader.output_buffer_size().expect("a buffer size")];
    let info = reader.next_frame(&mut buf).expect("a PNG frame");
    buf.truncate(info.buffer_size());
    let channels = info.color_type.samples();
    (info.width, info.height, channels, buf)
}

/// The (red, green) values of the top-left pixel of a fixture PNG: (row number, label * 50).
pub fn marker(bytes: &[u8]) -> (u8, u8) {
    let (_, _, channels, px) = decode_png(bytes);
    assert!(channels >= 3, "fixture images are RGB");
    (px[0], px[1])
}
