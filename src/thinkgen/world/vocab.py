"""The words the world writes: common short lowercase English words that OCR reads without doubt.

Every word here passes :func:`is_ocr_safe`, and none names a colour, a shape or a number, so a prompt
like ``a red circle and the word "cat"`` never leaves the reader unsure what is text and what is an object.
"""

from __future__ import annotations

import functools

from .scene import COLOURS, SHAPES, WorldConfig

# Letters a reader confuses with digits or capitals (l/1/I, i/1, o/0); a word may hold some, not mostly.
AMBIGUOUS_LETTERS = frozenset("ilo")
# Letter pairs that run together in small renders ("rn" reads as "m", "cl" as "d", "vv" as "w").
CONFUSABLE_PAIRS = ("rn", "cl", "vv", "ii", "ll")

_NUMBER_WORDS = frozenset(
    "zero one two three four five six seven eight nine ten eleven twelve".split()
)

_CANDIDATES = """
an at be by do go he hi if in is it me my no of on or ox so to up us we act add age ago aid aim air and
ant any ape arm art ask ate bad bag bat bay bed bee bet big bin bit bow box boy bud bug bun bus but buy
cab can cap car cat cow cry cub cup cut dad day den dew did dig dog dot dry due dug ear eat egg elf end
eye fan far fat fed few fig fin fit fix fly fog for fox fun fur gap gas gem get gum guy had ham has hat
hay hen her hid him hip his hit hop hot how hug hum hut ice ink jam jar jaw jet job jog joy jug key kid
kit lab lap law lay leg let mad man map mat may men met mix mom mop mud mug nap net new nod not now nut
oak oar odd off out own pad pan paw pay pea pen pet pie pig pin pit pop pot put rag ram rat raw ray rib
rid rim rip rob rod rub rug run sad sat saw say sea see set sew she shy sip sit sky sob son spy sun tab
tag tan tap tar tax tea tie tin tip toe top toy try tub tug use van vet war was wax way web wet who why
wig win yak yam yes yet you zip able acid aunt baby back bake band bank bark bath bear beat bird boat
body bone book boot bump bush busy cake calm camp card care cart case cave chef chin city coat code cook
crab crew cube cute damp dark dash date dawn deck deep desk dive dock door down draw drum duck dust each
east easy echo edge face fact farm fast fear feet find fire fish flag fork frog from fuel game gate gift
girl give glad glue goat good grab grow half hand harp have head heat help herb here hero home hope host
huge hunt idea jump just keep kind king kite knee knot lamp land late leaf left life like lime line list
loud love make mask meal meat milk mind moon more moth much name near neck need nest news next nice nose
note open pack page park part path pear pipe plan play plum poem pond pony pour push quiz race rain read
rest rich ride ring road rock roof room root rope rose rush safe sail salt sand save seed ship shoe shop
sing size skip slow snow soap sock soft song soup swim tail take talk team tent test time tiny tree trip
tuna vase very wave week west wind wing wish wolf word work yard year zone about above after again apple
bacon beach bench berry brave bread brick brush cabin camel candy chair chalk charm cheek chess chest
child coast cobra crane cream crown dance daisy dream dress drink eagle earth empty fairy feast field
flame float flute fresh fruit ghost giant grape grass happy heart honey horse house juice knife lemon
light magic mango maple march money month mouse music nurse ocean paint paper party peach piano pizza
plant queen quiet radio river robot salad scarf sheep shirt smile snake space spoon sport storm sugar
sunny table teeth tiger toast towel tower train truck water whale wheat witch world zebra
"""


def is_ocr_safe(word: str) -> bool:
    """Whether ``word`` reads unambiguously: lowercase letters, at most half of them ambiguous
    (:data:`AMBIGUOUS_LETTERS`), and no confusable letter pair (:data:`CONFUSABLE_PAIRS`)."""
    if not word.isascii() or not word.isalpha() or not word.islower():
        return False
    num_ambiguous = sum(ch in AMBIGUOUS_LETTERS for ch in word)
    return 2 * num_ambiguous <= len(word) and not any(pair in word for pair in CONFUSABLE_PAIRS)


def _is_reserved(word: str) -> bool:
    return word in COLOURS or word in SHAPES or word in _NUMBER_WORDS or word == "grey"


WORDS: tuple[str, ...] = tuple(
    sorted({w for w in _CANDIDATES.split() if is_ocr_safe(w) and not _is_reserved(w) and 2 <= len(w) <= 5})
)
"""The full vocabulary, sorted (a few hundred words of 2 to 5 letters)."""


@functools.lru_cache(maxsize=32)
def words_for(config: WorldConfig) -> tuple[str, ...]:
    """The words whose length fits ``config.word_length``.

    Raises:
        ValueError: when ``config.use_words`` is off (the world writes no words).
    """
    if not config.use_words:
        raise ValueError("this world has use_words=False, so it writes no words")
    lo, hi = config.word_length
    return tuple(w for w in WORDS if lo <= len(w) <= hi)
