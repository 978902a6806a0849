//! docs/events.md shows one JSON example of every event; each must decode, and none may be
//! missing, so the documentation cannot drift from the code.

use std::collections::BTreeSet;

use warren_messaging::Envelope;
use warren_messaging::events::EVENT_TYPES;

fn json_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match (&mut current, line.trim()) {
            (None, "```json") => current = Some(String::new()),
            (Some(block), "```") => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

#[test]
fn every_documented_example_decodes_and_every_event_is_documented() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/events.md");
    let markdown = std::fs::read_to_string(path).expect("docs/events.md exists");
    let mut documented = BTreeSet::new();
    for block in json_blocks(&markdown) {
        let env = Envelope::from_json(block.as_bytes())
            .unwrap_or_else(|e| panic!("example does not decode ({e}):\n{block}"));
        // What we encode again must decode to the same event.
        assert_eq!(Envelope::from_json(&env.to_json()).as_ref(), Ok(&env));
        assert!(
            documented.insert(env.event_type()),
            "{} documented twice",
            env.event_type()
        );
    }
    let expected: BTreeSet<&str> = EVENT_TYPES.into_iter().collect();
    assert_eq!(documented, expected);
}
