"""Language codes, names, scripts, and language identification.

Every language inside xlsteer is an ISO 639-1 code where one exists ("de", "sw", "zh"), else
the ISO 639-3 code ("yue", "gsw", "prs"). :func:`normalize_lang` maps the spellings found in
the data and typed by users to that form:

* ISO 639-3 / 639-2 codes (``deu``, ``ger``, ``zho``) and the NTREX codes (``zho-CN``,
  ``srp-Cyrl``, ``gsw-BE``); case and ``_``/``-`` do not matter (``ZH_cn``).
* The dominant individual language of a macrolanguage maps to the macrolanguage's 639-1 code
  (``arb``->ar, ``cmn``->zh, ``swh``->sw, ``zsm``->ms, ``pes``->fa, ``quz``->qu, ``kmr``->ku).
  Distinct varieties that have their own data keep their 639-3 code (``yue``, ``prs``, ``gsw``,
  ``ckb``), so two different files never collapse onto one code.
* Region subtags are dropped (``pt-BR``->pt, ``eng-GB``->en), *except* where they imply a
  different script.
* **Ambiguous codes raise LanguageError**: each xlsteer code means one script (see
  :func:`script_of`), so a code that names another script of the same language is refused
  rather than silently merged: ``zho-TW``/``zh-TW``/``zh-HK``/``zh-Hant`` (Traditional Chinese;
  ``zh`` means Simplified) and e.g. ``srp-Latn`` (``sr`` means Cyrillic Serbian).
* Old aliases: ``jp``->ja, ``iw``->he, ``in``->id, ``ji``->yi, ``jw``->jv, ``mo``->ro.
"""

from __future__ import annotations

import copy
import functools
import re
from typing import Iterable, Mapping, Protocol, Sequence

from ..errors import LanguageError, UsageError


class TextsByLanguage(Protocol):
    """What :func:`langid_accuracy` reads of a corpus (a :class:`~xlsteer.data.corpora.ParallelCorpus`)."""

    name: str
    langs: list[str]
    texts: Mapping[str, Sequence[str]]

# ISO 639-1 | ISO 639-3 (macrolanguage where one exists) | default script | English name
_ISO1 = """\
aa|aar|Latin|Afar
ab|abk|Cyrillic|Abkhazian
ae|ave|Avestan|Avestan
af|afr|Latin|Afrikaans
ak|aka|Latin|Akan
am|amh|Ethiopic|Amharic
an|arg|Latin|Aragonese
ar|ara|Arabic|Arabic
as|asm|Bengali|Assamese
av|ava|Cyrillic|Avaric
ay|aym|Latin|Aymara
az|aze|Latin|Azerbaijani
ba|bak|Cyrillic|Bashkir
be|bel|Cyrillic|Belarusian
bg|bul|Cyrillic|Bulgarian
bi|bis|Latin|Bislama
bm|bam|Latin|Bambara
bn|ben|Bengali|Bengali
bo|bod|Tibetan|Tibetan
br|bre|Latin|Breton
bs|bos|Latin|Bosnian
ca|cat|Latin|Catalan
ce|che|Cyrillic|Chechen
ch|cha|Latin|Chamorro
co|cos|Latin|Corsican
cr|cre|Canadian Syllabics|Cree
cs|ces|Latin|Czech
cu|chu|Cyrillic|Church Slavic
cv|chv|Cyrillic|Chuvash
cy|cym|Latin|Welsh
da|dan|Latin|Danish
de|deu|Latin|German
dv|div|Thaana|Dhivehi
dz|dzo|Tibetan|Dzongkha
ee|ewe|Latin|Ewe
el|ell|Greek|Greek
en|eng|Latin|English
eo|epo|Latin|Esperanto
es|spa|Latin|Spanish
et|est|Latin|Estonian
eu|eus|Latin|Basque
fa|fas|Arabic|Persian
ff|ful|Latin|Fulah
fi|fin|Latin|Finnish
fj|fij|Latin|Fijian
fo|fao|Latin|Faroese
fr|fra|Latin|French
fy|fry|Latin|Western Frisian
ga|gle|Latin|Irish
gd|gla|Latin|Scottish Gaelic
gl|glg|Latin|Galician
gn|grn|Latin|Guarani
gu|guj|Gujarati|Gujarati
gv|glv|Latin|Manx
ha|hau|Latin|Hausa
he|heb|Hebrew|Hebrew
hi|hin|Devanagari|Hindi
ho|hmo|Latin|Hiri Motu
hr|hrv|Latin|Croatian
ht|hat|Latin|Haitian Creole
hu|hun|Latin|Hungarian
hy|hye|Armenian|Armenian
hz|her|Latin|Herero
ia|ina|Latin|Interlingua
id|ind|Latin|Indonesian
ie|ile|Latin|Interlingue
ig|ibo|Latin|Igbo
ii|iii|Yi|Sichuan Yi
ik|ipk|Latin|Inupiaq
io|ido|Latin|Ido
is|isl|Latin|Icelandic
it|ita|Latin|Italian
iu|iku|Canadian Syllabics|Inuktitut
ja|jpn|Japanese|Japanese
jv|jav|Latin|Javanese
ka|kat|Georgian|Georgian
kg|kon|Latin|Kongo
ki|kik|Latin|Kikuyu
kj|kua|Latin|Kuanyama
kk|kaz|Cyrillic|Kazakh
kl|kal|Latin|Kalaallisut
km|khm|Khmer|Khmer
kn|kan|Kannada|Kannada
ko|kor|Hangul|Korean
kr|kau|Latin|Kanuri
ks|kas|Arabic|Kashmiri
ku|kur|Latin|Kurdish
kv|kom|Cyrillic|Komi
kw|cor|Latin|Cornish
ky|kir|Cyrillic|Kyrgyz
la|lat|Latin|Latin
lb|ltz|Latin|Luxembourgish
lg|lug|Latin|Ganda
li|lim|Latin|Limburgish
ln|lin|Latin|Lingala
lo|lao|Lao|Lao
lt|lit|Latin|Lithuanian
lu|lub|Latin|Luba-Katanga
lv|lav|Latin|Latvian
mg|mlg|Latin|Malagasy
mh|mah|Latin|Marshallese
mi|mri|Latin|Maori
mk|mkd|Cyrillic|Macedonian
ml|mal|Malayalam|Malayalam
mn|mon|Cyrillic|Mongolian
mr|mar|Devanagari|Marathi
ms|msa|Latin|Malay
mt|mlt|Latin|Maltese
my|mya|Myanmar|Burmese
na|nau|Latin|Nauru
nb|nob|Latin|Norwegian Bokmål
nd|nde|Latin|North Ndebele
ne|nep|Devanagari|Nepali
ng|ndo|Latin|Ndonga
nl|nld|Latin|Dutch
nn|nno|Latin|Norwegian Nynorsk
no|nor|Latin|Norwegian
nr|nbl|Latin|South Ndebele
nv|nav|Latin|Navajo
ny|nya|Latin|Chichewa
oc|oci|Latin|Occitan
oj|oji|Canadian Syllabics|Ojibwa
om|orm|Latin|Oromo
or|ori|Odia|Odia
os|oss|Cyrillic|Ossetian
pa|pan|Gurmukhi|Punjabi
pi|pli|Devanagari|Pali
pl|pol|Latin|Polish
ps|pus|Arabic|Pashto
pt|por|Latin|Portuguese
qu|que|Latin|Quechua
rm|roh|Latin|Romansh
rn|run|Latin|Rundi
ro|ron|Latin|Romanian
ru|rus|Cyrillic|Russian
rw|kin|Latin|Kinyarwanda
sa|san|Devanagari|Sanskrit
sc|srd|Latin|Sardinian
sd|snd|Arabic|Sindhi
se|sme|Latin|Northern Sami
sg|sag|Latin|Sango
si|sin|Sinhala|Sinhala
sk|slk|Latin|Slovak
sl|slv|Latin|Slovenian
sm|smo|Latin|Samoan
sn|sna|Latin|Shona
so|som|Latin|Somali
sq|sqi|Latin|Albanian
sr|srp|Cyrillic|Serbian
ss|ssw|Latin|Swati
st|sot|Latin|Southern Sotho
su|sun|Latin|Sundanese
sv|swe|Latin|Swedish
sw|swa|Latin|Swahili
ta|tam|Tamil|Tamil
te|tel|Telugu|Telugu
tg|tgk|Cyrillic|Tajik
th|tha|Thai|Thai
ti|tir|Ethiopic|Tigrinya
tk|tuk|Latin|Turkmen
tl|tgl|Latin|Tagalog
tn|tsn|Latin|Tswana
to|ton|Latin|Tonga
tr|tur|Latin|Turkish
ts|tso|Latin|Tsonga
tt|tat|Cyrillic|Tatar
tw|twi|Latin|Twi
ty|tah|Latin|Tahitian
ug|uig|Arabic|Uyghur
uk|ukr|Cyrillic|Ukrainian
ur|urd|Arabic|Urdu
uz|uzb|Latin|Uzbek
ve|ven|Latin|Venda
vi|vie|Latin|Vietnamese
vo|vol|Latin|Volapük
wa|wln|Latin|Walloon
wo|wol|Latin|Wolof
xh|xho|Latin|Xhosa
yi|yid|Hebrew|Yiddish
yo|yor|Latin|Yoruba
za|zha|Latin|Zhuang
zh|zho|Han|Chinese
zu|zul|Latin|Zulu
"""

# Languages without an ISO 639-1 code that appear in NTREX-128 or as py3langid labels.
_ISO3_ONLY = """\
ace|Latin|Acehnese
ary|Arabic|Moroccan Arabic
arz|Arabic|Egyptian Arabic
bcl|Latin|Central Bikol
bem|Latin|Bemba
ceb|Latin|Cebuano
ckb|Arabic|Central Kurdish
crh|Latin|Crimean Tatar
ext|Latin|Extremaduran
fil|Latin|Filipino
fuc|Latin|Pulaar
fuv|Latin|Nigerian Fulfulde
gcf|Latin|Guadeloupean Creole
gcr|Latin|Guianese Creole
gom|Devanagari|Goan Konkani
grc|Greek|Ancient Greek
gsw|Latin|Swiss German
guw|Latin|Gun
haw|Latin|Hawaiian
hbo|Hebrew|Ancient Hebrew
hmn|Latin|Hmong
kab|Latin|Kabyle
lij|Latin|Ligurian
ltg|Latin|Latgalian
mey|Arabic|Hassaniyya
nso|Latin|Northern Sotho
pcm|Latin|Nigerian Pidgin
prs|Arabic|Dari
sdh|Arabic|Southern Kurdish
shi|Tifinagh|Tachelhit
uzs|Arabic|Southern Uzbek
vec|Latin|Venetian
wuu|Han|Wu Chinese
yue|Han|Cantonese
"""

_PRIMARY: dict[str, str] = {}  # canonical code -> canonical code (validity)
LANG_NAMES: dict[str, str] = {}
_SCRIPT: dict[str, str] = {}
_ALIASES: dict[str, str] = {}  # lower-case alias -> canonical code

for _line in _ISO1.splitlines():
    _c1, _c3, _scr, _name = _line.split("|")
    LANG_NAMES[_c1] = _name
    _SCRIPT[_c1] = _scr
    _ALIASES[_c1] = _c1
    _ALIASES[_c3] = _c1
for _line in _ISO3_ONLY.splitlines():
    _c3, _scr, _name = _line.split("|")
    LANG_NAMES[_c3] = _name
    _SCRIPT[_c3] = _scr
    _ALIASES[_c3] = _c3

# ISO 639-2/B codes.
_ALIASES.update({
    "alb": "sq", "arm": "hy", "baq": "eu", "bur": "my", "chi": "zh", "cze": "cs", "dut": "nl",
    "fre": "fr", "geo": "ka", "ger": "de", "gre": "el", "ice": "is", "mac": "mk", "mao": "mi",
    "may": "ms", "per": "fa", "rum": "ro", "slo": "sk", "tib": "bo", "wel": "cy",
})
# Dominant individual language of a macrolanguage -> the macrolanguage's 639-1 code.
_ALIASES.update({
    "arb": "ar", "cmn": "zh", "swh": "sw", "zsm": "ms", "pes": "fa", "ekk": "et", "lvs": "lv",
    "khk": "mn", "npi": "ne", "ory": "or", "plt": "mg", "quz": "qu", "quy": "qu", "uzn": "uz",
    "azj": "az", "ydd": "yi", "gaz": "om", "pbt": "ps", "als": "sq", "gug": "gn", "kmr": "ku",
})
# Deprecated / colloquial codes.
_ALIASES.update({"jp": "ja", "iw": "he", "in": "id", "ji": "yi", "jw": "jv", "mo": "ro"})

# ISO 15924 script subtags -> script names used by script_of.
_SCRIPT_SUBTAGS = {
    "latn": "Latin", "cyrl": "Cyrillic", "arab": "Arabic", "hans": "Han", "hani": "Han",
    "hant": "Han (Traditional)", "jpan": "Japanese", "kore": "Hangul", "hang": "Hangul",
    "thai": "Thai", "deva": "Devanagari", "beng": "Bengali", "telu": "Telugu", "taml": "Tamil",
    "grek": "Greek", "hebr": "Hebrew", "geor": "Georgian", "armn": "Armenian", "ethi": "Ethiopic",
    "gujr": "Gujarati", "guru": "Gurmukhi", "knda": "Kannada", "mlym": "Malayalam", "orya": "Odia",
    "sinh": "Sinhala", "khmr": "Khmer", "laoo": "Lao", "mymr": "Myanmar", "tibt": "Tibetan",
    "thaa": "Thaana", "cans": "Canadian Syllabics", "yiii": "Yi", "tfng": "Tifinagh", "avst": "Avestan",
}
_TRADITIONAL_ZH_REGIONS = {"tw", "hk", "mo"}
_NO_SPACES_SCRIPTS = {"Han", "Japanese", "Thai", "Lao", "Khmer", "Myanmar", "Tibetan"}

_SUBTAG = re.compile(r"^(?:[a-z]{2}|\d{3})$")


def _unknown(code: object) -> LanguageError:
    return LanguageError(f"unknown language code {str(code)!r}; use ISO 639-1 codes such as de, sw, zh")


def normalize_lang(code: str) -> str:
    """Map a language code to xlsteer's form (ISO 639-1 where one exists); see the module doc."""
    if not isinstance(code, str) or not code.strip():
        raise _unknown(code)
    raw = code.strip()
    parts = re.split(r"[-_]", raw.lower())
    base = _ALIASES.get(parts[0])
    if base is None:
        raise _unknown(raw)
    script: str | None = None
    region: str | None = None
    for sub in parts[1:]:
        if len(sub) == 4 and sub.isalpha():
            if script is not None or sub not in _SCRIPT_SUBTAGS:
                raise _unknown(raw)
            script = sub
        elif _SUBTAG.match(sub):
            if region is not None:
                raise _unknown(raw)
            region = sub
        else:
            raise _unknown(raw)
    if base == "zh" and (script == "hant" or (script is None and region in _TRADITIONAL_ZH_REGIONS)):
        raise LanguageError(
            f"language code {raw!r} means Traditional Chinese, but xlsteer's 'zh' is Simplified Chinese; "
            "convert the text to Simplified Chinese and use 'zh'"
        )
    if script is not None and script not in ("hans", "hani") and base in _SCRIPT:
        want = _SCRIPT[base]
        got = _SCRIPT_SUBTAGS[script]
        if got != want:
            raise LanguageError(
                f"language code {raw!r} names {LANG_NAMES[base]} in {got} script, but xlsteer's "
                f"{base!r} means {want} script; transliterate the text to {want} script and use {base!r}"
            )
    return base


def normalize_langs(codes: Iterable[str] | str) -> list[str]:
    """Normalise a list (or a comma/space separated string) of codes; refuse duplicates."""
    if isinstance(codes, str):
        codes = [c for c in re.split(r"[,\s]+", codes) if c]
    out: list[str] = []
    for c in codes:
        n = normalize_lang(c)
        if n in out:
            raise UsageError(f"language {n} is given twice (as {c!r}); list each language once")
        out.append(n)
    return out


def lang_name(code: str) -> str:
    """English name of a language ("de" -> "German")."""
    return LANG_NAMES[normalize_lang(code)]


def script_of(lang: str) -> str:
    """The script xlsteer assumes for a language: Latin, Cyrillic, Han, Japanese, Hangul, Thai, ..."""
    return _SCRIPT[normalize_lang(lang)]


def uses_spaces(lang: str) -> bool:
    """Whether words are separated by spaces (False for zh, ja, th, lo, km, my, bo, dz, yue, wuu)."""
    return script_of(lang) not in _NO_SPACES_SCRIPTS


# ---------------------------------------------------------------------------------------------
# Language identification (py3langid; its model ships inside the package, no download)

# py3langid labels for varieties, folded into their ISO 639-3 macrolanguage's 639-1 code: the
# classifier's split between e.g. Mandarin and Wu on short text is noise for "is this Chinese".
LANGID_FOLD = {"ary": "ar", "arz": "ar", "wuu": "zh", "yue": "zh", "uzs": "uz", "sdh": "ku", "fuv": "ff"}
UNDETERMINED = "und"


@functools.lru_cache(maxsize=1)
def _base_identifier():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE)


def langid_languages() -> list[str]:
    """Normalised codes py3langid can return (after folding)."""
    out = []
    for lab in _base_identifier().labels:
        n = _label_to_code(lab)
        if n not in out and n != "zxx":
            out.append(n)
    return out


def _label_to_code(label: str) -> str:
    if label in LANGID_FOLD:
        return LANGID_FOLD[label]
    try:
        return normalize_lang(label)
    except LanguageError:
        return label


@functools.lru_cache(maxsize=64)
def _identifier(labels: frozenset[str] | None):
    """A private identifier (never the module-global one, so no global state is changed)."""
    ident = copy.copy(_base_identifier())
    if labels is not None:
        ident.set_languages(sorted(labels))
    return ident


def _candidate_labels(candidates: Iterable[str]) -> frozenset[str]:
    base_labels = list(_base_identifier().labels)
    by_code: dict[str, list[str]] = {}
    for lab in base_labels:
        by_code.setdefault(_label_to_code(lab), []).append(lab)
    labels: set[str] = set()
    for c in candidates:
        code = normalize_lang(c)
        if code not in by_code:
            raise LanguageError(
                f"language identification does not know {code!r}; drop it from the candidates "
                f"(py3langid knows: {' '.join(sorted(k for k in by_code if k != 'zxx'))})"
            )
        labels.update(by_code[code])
    if not labels:
        raise UsageError("empty candidate list for language identification; give at least one language or None")
    return frozenset(labels)


def identify_language(texts: list[str], candidates: list[str] | None = None) -> list[str]:
    """Language of each text as a normalised code (py3langid; "und" for empty text).

    With ``candidates``, the classifier chooses among those languages only (closed set), which
    is what a "did the model answer in the target language" check usually wants.
    """
    if isinstance(texts, str):
        raise UsageError("identify_language takes a list of texts, not one string; wrap it in a list")
    ident = _identifier(None if candidates is None else _candidate_labels(candidates))
    out = []
    for t in texts:
        if not t or not t.strip():
            out.append(UNDETERMINED)
            continue
        label, _ = ident.classify(t)
        out.append(_label_to_code(label))
    return out


def langid_accuracy(
    corpus: TextsByLanguage, langs: list[str] | None = None, n: int | None = 50,
    candidates: list[str] | None = None,
) -> dict[str, float]:
    """Share of the first ``n`` lines of each language that py3langid labels correctly.

    ``candidates=None`` is the open set (all ~100 languages of the model), the honest figure
    for judging outputs; pass the corpus languages for the closed-set figure.
    """
    langs = corpus.langs if langs is None else normalize_langs(langs)
    out: dict[str, float] = {}
    for lang in langs:
        if lang not in corpus.texts:
            raise LanguageError(f"corpus {corpus.name} has no language {lang!r}; available: {' '.join(corpus.langs)}")
        lines = [t for t in corpus.texts[lang][:n] if t.strip()]
        if not lines:
            raise UsageError(f"no non-empty lines for {lang} in corpus {corpus.name}; use a larger n")
        pred = identify_language(lines, candidates)
        out[lang] = sum(p == lang for p in pred) / len(lines)
    return out
