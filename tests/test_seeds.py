"""`make seeds` covers every tutorial flagfile and can say what each reproduces."""

from conftest import REPO

from benchmarks import seeds


def test_every_tutorial_flagfile_is_a_row_with_its_tutorial_and_number():
    flagfiles = {p.stem for p in (REPO / "flags").glob("*.cfg")} - {"demo"}
    assert set(seeds.TUTORIALS) == flagfiles
    for name in seeds.TUTORIALS:
        header = seeds.read_header(REPO / "flags" / f"{name}.cfg")
        assert header.tutorial, name
        assert header.reported, name


def test_the_table_replaces_only_what_lies_between_the_markers():
    text = f"before\n{seeds.BEGIN}\nold table\n{seeds.END}\nafter\n"
    assert seeds.replace_between_markers(text, "| new |") == (
        f"before\n{seeds.BEGIN}\n| new |\n{seeds.END}\nafter\n"
    )
    for doc in ("WORKSPACE.md", "README.md"):
        text = (REPO / doc).read_text()
        assert text.count(seeds.BEGIN) == text.count(seeds.END) == 1, doc
