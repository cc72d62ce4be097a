//! The codec of openmls state in the local store is a frozen format: state written by an
//! earlier Sotto (here a leaf node, as the ratchet tree stores it) must decode and re-encode
//! to the same bytes. A failure means a store made before the change can no longer be read:
//! that needs a migration of the store, not a new vector.

use openmls::prelude::LeafNode;
use openmls_sqlite_storage::Codec as _;
use sotto_client::store::JsonCodec;

#[test]
fn the_stored_openmls_state_codec_is_frozen() {
    let path = format!(
        "{}/tests/vectors/openmls_leaf_node.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let raw = std::fs::read_to_string(path).unwrap();
    let leaf: LeafNode = JsonCodec::from_slice(raw.trim_end().as_bytes()).unwrap();
    assert_eq!(JsonCodec::to_vec(&leaf).unwrap(), raw.trim_end().as_bytes());
    assert_eq!(
        leaf.credential().serialized_content(),
        b"alice/0011223344556677"
    );
}
