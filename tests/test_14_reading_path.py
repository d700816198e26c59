"""Chapter 14: the README's reading path stays true.

The README's first section, "Read this first", promises a reading path: Part I of
`ws_server.py` (lines 1 to N), then Part I of `sse_server.py` (lines 1 to M), each with a
table that leads from a concept of the tutorial to its section (I.1, I.2, ...), the function
or class that does it, and the line where it is defined, in the order the file has them.  The
modules change (someone may be editing one right now); a table that points a learner at the
wrong line, or at a name that moved to Part II, breaks that promise silently.  So this chapter
reads the README and both modules (as text and with `ast`: neither module is imported) and
checks:

- the steps name each module once, with its Part I line range, and each module has one table;
- every row parses (`| concept | I.x | `name` | line |`), so no row is skipped;
- every name is defined in its module at exactly the line given: a top-level `def`, `class`
  or constant (an assignment: the bit masks are constants), or a method given as
  `Class.method`; for a definition with decorators, the line of `def` / `class` itself;
- every name is under the section its row gives (the last `# I.x ...` heading above it);
- the rows of each table are in increasing line order: the file's order;
- every row is before its module's divider, the comment line `PART II — FOR REAL USE`;
- the range "lines 1–N" ends right before the divider's block of comment lines: N is the
  last line before it;
- every section of Part I has at least one row: the path reaches every section, in order.

Standard library only; it reads three files and opens no socket.
"""

from __future__ import annotations

import ast
import functools
import re
import unittest

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

README = ROOT / "README.md"
MODULES = ("ws_server.py", "sse_server.py")

#: The divider between the two parts, as a comment line of each module.
DIVIDER = "PART II — FOR REAL USE"

#: A step of the reading path that gives a module's Part I: "Part I of [`ws_server.py`](ws_server.py), lines 1–1270".
RANGE = re.compile(r"Part I of \[`(?P<module>\w+\.py)`\]\((?P=module)\), lines 1–(?P<end>\d+)")

#: The heading above a module's table: "### `ws_server.py`, Part I".
TABLE_HEADING = re.compile(r"^### `(?P<module>\w+\.py)`, Part I\s*$")

#: A table row: | concept | section | `name` | line |
ROW = re.compile(r"^\|\s*(?P<concept>[^|]+?)\s*\|\s*(?P<section>I\.\d+)\s*\|\s*`(?P<name>\w+(?:\.\w+)?)`\s*"
                 r"\|\s*(?P<line>\d+)\s*\|\s*$")

#: A section heading in a module: a `# ----` rule, then `# I.3 Masking (§5.3)`.
SECTION = re.compile(r"^# (?P<label>I{1,2}\.\d+) \S")


def read_this_first() -> list[str]:
    """The lines of the README's "## Read this first" section, up to the next `## ` heading."""
    lines = README.read_text(encoding="utf-8").splitlines()
    if "## Read this first" not in lines:
        raise AssertionError('the README has no "## Read this first" section')
    start = lines.index("## Read this first")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return lines[start + 1:end]


@functools.lru_cache(maxsize=None)
def reading_tables() -> dict[str, list[tuple[str, str, str, int] | str]]:
    """Each module's table: its rows as (concept, section, name, line), or as the raw text of a
    row that does not parse (which a test then reports)."""
    tables: dict[str, list] = {}
    current = None
    for line in read_this_first():
        heading = TABLE_HEADING.match(line)
        if heading:
            current = heading["module"]
            if current in tables:
                raise AssertionError(f"two tables for {current}")
            tables[current] = []
        elif line.startswith("#"):
            current = None
        elif current is not None and line.startswith("|"):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            if cells == ["concept", "section", "code", "line"] or set("".join(cells)) <= set("-: "):
                continue  # the table's header and its delimiter row
            row = ROW.match(line)
            tables[current].append((row["concept"], row["section"], row["name"], int(row["line"])) if row else line)
    return tables


@functools.lru_cache(maxsize=None)
def stated_ranges() -> dict[str, list[int]]:
    """The last line of each module's Part I as the steps state it, every time they state it."""
    ranges: dict[str, list[int]] = {}
    for match in RANGE.finditer("\n".join(read_this_first())):
        ranges.setdefault(match["module"], []).append(int(match["end"]))
    return ranges


class Module:
    """A module as the checks need it: its definitions and their lines, its section headings,
    and its divider, read from the source (nothing is imported)."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.source = (ROOT / filename).read_text(encoding="utf-8")
        self.lines = self.source.splitlines()
        self.definitions: dict[str, list[int]] = {}  # name -> the lines defining it (usually one)
        for node in ast.parse(self.source, filename).body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                self._define(node.name, node.lineno)
                if isinstance(node, ast.ClassDef):
                    for member in node.body:
                        if isinstance(member, (ast.FunctionDef, ast.AsyncFunctionDef)):
                            self._define(f"{node.name}.{member.name}", member.lineno)
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    for name in (target.elts if isinstance(target, ast.Tuple) else [target]):
                        if isinstance(name, ast.Name):
                            self._define(name.id, node.lineno)
        dividers = [number for number, line in enumerate(self.lines, 1)
                    if line.startswith("#") and DIVIDER in line]
        if len(dividers) != 1:
            raise AssertionError(f"{filename}: {len(dividers)} comment lines with {DIVIDER!r}, expected one")
        self.divider = dividers[0]
        start = self.divider
        while start > 1 and self.lines[start - 2].startswith("#"):
            start -= 1
        self.divider_block_start = start  # the first comment line of the divider's block
        # Section headings: "# I.3 Masking (§5.3)" right under a "# ----" rule.
        self.sections: list[tuple[int, str]] = [
            (number, match["label"]) for number, line in enumerate(self.lines, 1)
            if (match := SECTION.match(line)) and number > 1 and self.lines[number - 2].startswith("# ---")]

    def _define(self, name: str, line: int) -> None:
        self.definitions.setdefault(name, []).append(line)

    def section_of(self, line: int) -> str | None:
        """The label of the last section heading above `line`."""
        above = [label for number, label in self.sections if number < line]
        return above[-1] if above else None

    def part_i_sections(self) -> list[str]:
        return [label for number, label in self.sections if number < self.divider and label.startswith("I.")]


@functools.lru_cache(maxsize=None)
def module(filename: str) -> Module:
    return Module(filename)


class Test01TheReadingPath(unittest.TestCase):

    def test_01_each_module_has_one_part_i_range_and_one_table(self):
        """README "Read this first": both modules are on the path, each with one "Part I of ..., lines 1–N" step and one table, and nothing else is."""
        self.assertEqual(set(stated_ranges()), set(MODULES), "the modules named by the steps' line ranges")
        for filename, ends in stated_ranges().items():
            self.assertEqual(len(ends), 1, f"{filename}: its Part I range is stated {len(ends)} times")
        self.assertEqual(list(reading_tables()), list(MODULES), "the tables, by module, in the order of the steps")
        for filename, rows in reading_tables().items():
            self.assertTrue(rows, f"{filename}: its table has no rows")

    def test_02_ws_server_is_read_before_sse_server(self):
        """README "Read this first": the steps give ws_server.py's Part I before sse_server.py's (sse_server.py borrows ws_server.py's HTTP layer)."""
        text = "\n".join(read_this_first())
        found = [match["module"] for match in RANGE.finditer(text)]
        self.assertEqual(found, list(MODULES))

    def test_03_every_row_parses_as_concept_section_name_line(self):
        """README "Read this first": every row of both tables reads `| concept | I.x | `name` | line |`, so none is skipped by the other checks."""
        for filename, rows in reading_tables().items():
            for row in rows:
                with self.subTest(module=filename, row=row if isinstance(row, str) else row[2]):
                    self.assertIsInstance(row, tuple, f"{filename}: a row that does not parse: {row!r}")


def parsed_rows():
    """(module, concept, section, name, line) for every row that parses."""
    for filename, rows in reading_tables().items():
        for row in rows:
            if isinstance(row, tuple):
                yield (module(filename), *row)


class Test02EveryRowIsTrue(unittest.TestCase):

    def test_01_every_name_is_defined_at_exactly_the_line_given(self):
        """README "Read this first": each row's function, class, constant or Class.method is defined in its module (ast: top level, or a method of a top-level class) at exactly the line given."""
        for source, concept, section, name, line in parsed_rows():
            with self.subTest(module=source.filename, name=name):
                self.assertIn(name, source.definitions, f"{source.filename} defines no {name}")
                self.assertEqual(source.definitions[name], [line],
                                 f"{source.filename}: {name} is defined at line(s) {source.definitions[name]}, "
                                 f"the README says {line}")

    def test_02_every_name_is_under_the_section_given(self):
        """README "Read this first": each row's line lies under the module's `# I.x` section heading that the row names."""
        for source, concept, section, name, line in parsed_rows():
            with self.subTest(module=source.filename, name=name):
                self.assertEqual(source.section_of(line), section,
                                 f"{source.filename} line {line} ({name}) is in section {source.section_of(line)}, "
                                 f"the README says {section}")

    def test_03_every_row_is_before_the_part_ii_divider(self):
        """README "Read this first": each row's line is in Part I, before the module's `PART II — FOR REAL USE` divider."""
        for source, concept, section, name, line in parsed_rows():
            with self.subTest(module=source.filename, name=name):
                self.assertLess(line, source.divider_block_start,
                                f"{source.filename}: {name} (line {line}) is past the divider (line {source.divider})")

    def test_04_the_rows_of_each_table_are_in_increasing_line_order(self):
        """README "Read this first": each table lists its rows in the order the file has them (strictly increasing lines), so reading down the table is reading down the file."""
        for filename, rows in reading_tables().items():
            lines = [row[3] for row in rows if isinstance(row, tuple)]
            with self.subTest(module=filename):
                out_of_order = [(a, b) for a, b in zip(lines, lines[1:]) if b <= a]
                self.assertEqual(out_of_order, [], f"{filename}: rows whose line does not follow the previous row's")

    def test_05_every_section_of_part_i_has_a_row(self):
        """README "Read this first": every section of Part I (I.1, I.2, ...) has at least one row, and the tables meet the sections in the file's order."""
        for filename, rows in reading_tables().items():
            source = module(filename)
            met = []
            for row in rows:
                if isinstance(row, tuple) and (not met or met[-1] != row[1]):
                    met.append(row[1])
            with self.subTest(module=filename):
                sections = source.part_i_sections()
                self.assertEqual(sections, [f"I.{n}" for n in range(1, len(sections) + 1)],
                                 f"{filename}: its Part I headings are not I.1, I.2, ... in order")
                self.assertEqual(met, sections)


class Test03ThePartIRanges(unittest.TestCase):

    def test_01_each_part_i_range_ends_right_before_the_divider(self):
        """README "Read this first": "lines 1–N" ends at the last line before the block of comment lines that holds the module's `PART II — FOR REAL USE` divider."""
        for filename, ends in stated_ranges().items():
            with self.subTest(module=filename):
                self.assertIn(filename, MODULES, f"the README names a module this chapter does not know: {filename}")
                source = module(filename)
                self.assertEqual(ends[0], source.divider_block_start - 1,
                                 f"{filename}: the divider's block starts at line {source.divider_block_start}")

    def test_02_the_divider_block_is_a_comment_block_after_part_i(self):
        """README "Read this first": the line right after each stated range is the first line of the divider's comment block, and every line of that block up to the divider is a comment."""
        for filename, ends in stated_ranges().items():
            if filename not in MODULES:
                continue  # reported by test_01
            source = module(filename)
            with self.subTest(module=filename):
                block = source.lines[ends[0]:source.divider]  # lines N+1 .. the divider
                self.assertTrue(block and all(line.startswith("#") for line in block),
                                f"{filename}: lines {ends[0] + 1}-{source.divider} are not one comment block")
                self.assertIn(DIVIDER, block[-1])


if __name__ == "__main__":
    unittest.main()
