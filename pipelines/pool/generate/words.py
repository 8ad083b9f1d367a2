"""The words the generator writes (sign words, shop items, store names, document titles, people)
and the random text made from them: codes, store names and near-miss distractors."""

from __future__ import annotations

from pipelines.pool.generate.rand import pick

_LETTERS = "ABCDEFGHJKLMNPRSTUVWXYZ"   # no I, O, Q: never confusable with 1 and 0
_DIGITS = "0123456789"


SIGN_WORDS = (
    "OPEN", "EXIT", "BAKERY", "PHARMACY", "HOTEL", "PARKING", "CAFE", "BOOKS", "TAXI", "BUS STOP",
    "NO ENTRY", "SALE", "MARKET", "POST OFFICE", "BANK", "GARAGE", "FLORIST", "TICKETS", "PIZZA",
    "GYM", "LIBRARY", "MUSEUM", "DENTIST", "LAUNDRY", "BARBER", "TOILETS", "INFO", "ENTRANCE",
    "KEEP LEFT", "STOP", "SLOW", "ONE WAY", "DELI", "NOODLES", "SUSHI", "TOYS", "SHOES", "REPAIRS",
    "BIKES", "PETS", "CINEMA", "BAR", "TAILOR", "HARDWARE", "FISH", "BUTCHER", "TEA HOUSE",
    "ARCADE", "PRINTS", "KEYS CUT", "FRESH JUICE", "VINTAGE", "CLOSED", "PUSH", "PULL", "DANGER",
)
ITEMS = ("APPLES", "BANANAS", "BREAD", "MILK", "EGGS", "CHEESE", "COFFEE", "TEA", "RICE", "PASTA",
         "BUTTER", "YOGURT", "ORANGES", "TOMATOES", "ONIONS", "CARROTS", "HONEY", "JUICE", "SOAP",
         "CEREAL", "LEMONS", "GRAPES", "FLOUR", "SUGAR", "PEPPERS", "OLIVES")
STORE_A = ("GREEN", "GOLDEN", "CORNER", "SUNNY", "BLUE", "OLD TOWN", "CITY", "RIVER", "MAPLE",
           "NORTH", "HILLSIDE", "HARBOR", "PINE", "STAR")
_STORE_B = ("MARKET", "GROCER", "BAKERY", "DELI", "FOODS", "STORE", "PANTRY", "SHOP", "MART")
TITLES = ("QUARTERLY REPORT", "MEETING NOTES", "SAFETY NOTICE", "DELIVERY NOTE", "INVOICE",
          "PROJECT PLAN", "LEASE AGREEMENT", "WORK ORDER", "PACKING LIST", "TRAVEL ITINERARY",
          "MAINTENANCE LOG", "EXAM SCHEDULE", "PRICE LIST", "VISITOR PASS", "BUDGET SUMMARY",
          "SITE INSPECTION", "PURCHASE ORDER", "TRAINING PLAN")
NAMES = ("Alice", "Bruno", "Chen", "Dana", "Emeka", "Farah", "Greta", "Hugo", "Ines", "Jonas",
         "Kofi", "Lena", "Mateo", "Nadia", "Omar", "Priya")


def code(rng, pattern: str) -> str:
    """L = letter, D = digit, anything else literal."""
    return "".join(pick(rng, _LETTERS) if c == "L" else pick(rng, _DIGITS) if c == "D" else c
                   for c in pattern)


def perturb_text(rng, text: str) -> str:
    """The same text with one letter or digit changed: a near-miss multiple-choice distractor."""
    spots = [k for k, c in enumerate(text) if c.isalnum()]
    if not spots:
        return text + "1"
    k = pick(rng, spots)
    pool = _DIGITS if text[k].isdigit() else _LETTERS if text[k].isupper() else "abcdefghkmnprstuvwxyz"
    choices = [c for c in pool if c != text[k]]
    return text[:k] + pick(rng, choices) + text[k + 1:]


def store_name(rng) -> str:
    return f"{pick(rng, STORE_A)} {pick(rng, _STORE_B)}"
