//! The README's topic table is the shipped topology's (`Topology::topic_table`): the table is
//! written in one place, the topology, and this test fails when the README's copy differs.

use horizon_core::topology::Topology;
use std::path::Path;

const BEGIN: &str = "<!-- topics:begin -->\n";
const END: &str = "<!-- topics:end -->";

#[test]
fn the_readme_topic_table_is_the_shipped_topologys() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let readme = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let (Some(b), Some(e)) = (readme.find(BEGIN), readme.find(END)) else {
        panic!("README.md: no `{}` ... `{END}` markers around the topic table", BEGIN.trim_end());
    };
    let ours = &readme[b + BEGIN.len()..e];
    let want = Topology::shipped().topic_table();
    assert!(
        ours == want,
        "README.md's topic table differs from Topology::shipped().topic_table(); put this between the markers:\n{want}"
    );
}
