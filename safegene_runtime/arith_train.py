"""Grade-school arithmetic word problems with worked solutions, written here from templates, for training.

Why in the library: aligning the base model (SmolLM2-135M-Instruct) can wear away its ability to answer simple
word problems in words. These question -> solution pairs are supervised fine-tuning data that keep (or teach) it:
each solution states its arithmetic as ``a op b = c`` in one to three short sentences and ends with
``The answer is N.``. The templates deliberately share no situation with the held-out validation word problems
(``arith-val``, :mod:`.arith`; their author was given only the list of its situations, never its code or items), so
that set stays a fair check of what the training did; the tests check that no training question equals or contains
one of ``arith-val``'s or GSM8K-100's. GSM8K's everyday topics (eggs, tickets, savings) were not avoided: GSM8K-100
measures whether the skill carries over to longer, harder problems, not unseen topics.

Integers only: every operand, intermediate value and answer is a positive integer, answers lie between 1 and about
1000, and operands are mostly below 100 so that a 135M model can plausibly do the sums. Every solution's arithmetic
is checked by ``tests/test_arith_train.py``. Generation is deterministic across machines (:func:`worked_problems`
seeds one :class:`random.Random` per item from :data:`SEED_BASE`, the template's position and its item counter).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

#: base of every item's seed; far from small numbers so no other seeded draw in the project shares these streams
SEED_BASE = 7_000_000


@dataclass(frozen=True)
class WorkedProblem:
    """One word problem: the question, its integer answer and a short worked solution ending in the answer."""

    question: str
    answer: int
    solution: str


# --- vocabulary: several lists, so that no small set of names or objects repeats everywhere ---

_NAMES = ("Amara", "Bilal", "Chen", "Dalia", "Emeka", "Farah", "Gustavo", "Hana", "Ivan", "Jamila", "Kenji",
          "Leila", "Mateo", "Nadia", "Oskar", "Priya", "Quentin", "Rosa", "Sven", "Tariq", "Ursula", "Vikram",
          "Wen", "Ximena", "Yusuf", "Zara", "Aoife", "Bruno", "Camille", "Diego", "Elif", "Femi", "Greta",
          "Hiroshi", "Ines", "Joaquin", "Kavya", "Lars", "Mei", "Nikolai", "Olga", "Pablo", "Rania", "Sanjay",
          "Thandi", "Umar", "Valentina", "Wiremu", "Yara", "Zoltan", "Anika", "Bongani", "Clara", "Dmitri",
          "Esme", "Felipe", "Gwen", "Hamid", "Isla", "Jonas")
_TEAMS = ("the Falcons", "the Otters", "the Comets", "the Lions", "the Pirates", "the Rockets", "the Wolves",
          "the Hornets", "the Tigers", "the Sharks", "the Badgers", "the Eagles")
_TOWNS = ("Millbrook", "Harwick", "Stonebridge", "Lakeside", "Fernvale", "Oakport", "Redhill", "Brightwater",
          "Ashford", "Pinecrest", "Cedar Falls", "Westmoor")


def _name(rng: random.Random) -> str:
    return rng.choice(_NAMES)


def _solved(question: str, answer: int, *sentences: str) -> WorkedProblem:
    """A problem whose solution is the given sentences followed by ``The answer is N.``."""
    return WorkedProblem(question=question, answer=answer, solution=" ".join((*sentences, f"The answer is {answer}.")))


# --- one-step templates: a single +, -, × or ÷ ---

def _hall_chairs(rng: random.Random) -> WorkedProblem:
    rows, per_row = rng.randint(3, 12), rng.randint(4, 15)
    place = rng.choice(("school hall", "town hall", "church hall", "community centre", "theatre", "wedding tent"))
    town = rng.choice(_TOWNS)
    total = rows * per_row
    seat = rng.choice(("chairs", "seats"))
    q = rng.choice((
        f"For a concert in the {place} in {town}, {seat} are set out in {rows} rows with {per_row} {seat} in each "
        f"row. How many {seat} are set out?",
        f"The {place} in {town} has {rows} rows of {seat}, and every row has {per_row} {seat}. How many {seat} are "
        f"there in all?",
    ))
    return _solved(q, total, f"There are {rows} rows with {per_row} {seat} in each row, so "
                             f"{rows} × {per_row} = {total} {seat}.")


def _practice_week(rng: random.Random) -> WorkedProblem:
    who = _name(rng)
    minutes, days = rng.randint(10, 45), rng.choice((5, 6, 7))
    skill = rng.choice(("the piano", "the violin", "the guitar", "chess", "juggling", "the flute", "drawing",
                        "basketball free throws", "typing"))
    total = minutes * days
    q = (f"{who} practises {skill} for {minutes} minutes a day, {days} days a week. How many minutes does {who} "
         f"practise in one week?")
    return _solved(q, total, f"{who} practises {minutes} minutes on each of {days} days, so "
                             f"{minutes} × {days} = {total} minutes.")


def _stairs_floors(rng: random.Random) -> WorkedProblem:
    who = _name(rng)
    steps, floors = rng.randint(10, 22), rng.randint(2, 9)
    building = rng.choice(("apartment building", "office tower", "hotel", "library", "hospital", "museum"))
    total = steps * floors
    q = (f"In an old {building}, each flight of stairs between two floors has {steps} steps. The lift is broken, "
         f"so {who} walks up {floors} floors. How many steps does {who} climb?")
    return _solved(q, total, f"Each floor takes {steps} steps and {who} climbs {floors} floors, so "
                             f"{steps} × {floors} = {total} steps.")


def _bakery_day(rng: random.Random) -> WorkedProblem:
    morning, afternoon = rng.randint(15, 95), rng.randint(10, 80)
    bread = rng.choice(("loaves of rye bread", "baguettes", "sourdough loaves", "bagels", "croissants",
                        "cinnamon rolls", "pretzels"))
    baker = rng.choice(_NAMES)
    total = morning + afternoon
    q = (f"{baker}'s bakery sold {morning} {bread} in the morning and {afternoon} {bread} in the afternoon. "
         f"How many {bread} did the bakery sell that day?")
    return _solved(q, total, f"The bakery sold {morning} in the morning and {afternoon} in the afternoon, so "
                             f"{morning} + {afternoon} = {total} {bread}.")


def _temperature_rise(rng: random.Random) -> WorkedProblem:
    start, rise = rng.randint(2, 20), rng.randint(3, 15)
    town = rng.choice(_TOWNS)
    total = start + rise
    q = rng.choice((
        f"At 7 in the morning the temperature in {town} was {start} degrees. By noon it had risen by {rise} "
        f"degrees. What was the temperature at noon?",
        f"A thermometer in a greenhouse showed {start} degrees at sunrise. During the morning the temperature "
        f"went up {rise} degrees. What did the thermometer show then?",
    ))
    return _solved(q, total, f"The temperature started at {start} degrees and rose {rise} degrees, so "
                             f"{start} + {rise} = {total} degrees.")


def _plant_growth(rng: random.Random) -> WorkedProblem:
    who = _name(rng)
    height, growth = rng.randint(12, 90), rng.randint(5, 40)
    plant = rng.choice(("sunflower", "bean plant", "tomato plant", "young oak tree", "bamboo shoot", "corn stalk"))
    total = height + growth
    q = (f"{who} measured a {plant} and found it was {height} centimetres tall. A month later it had grown "
         f"another {growth} centimetres. How tall is the {plant} now?")
    return _solved(q, total, f"The {plant} was {height} centimetres and grew {growth} centimetres, so "
                             f"{height} + {growth} = {total} centimetres.")


def _game_lead(rng: random.Random) -> WorkedProblem:
    loser = rng.randint(12, 70)
    winner = loser + rng.randint(2, 30)
    team_a, team_b = rng.sample(_TEAMS, 2)
    sport = rng.choice(("basketball", "handball", "netball", "rugby"))
    diff = winner - loser
    q = (f"In a {sport} match, {team_a} scored {winner} points and {team_b} scored {loser} points. How many more "
         f"points did {team_a} score than {team_b}?")
    return _solved(q, diff, f"{team_a[0].upper() + team_a[1:]} scored {winner} and {team_b} scored {loser}, so "
                            f"{winner} - {loser} = {diff} points more.")


def _parking_lot(rng: random.Random) -> WorkedProblem:
    spaces = rng.randint(30, 120)
    cars = rng.randint(5, spaces - 3)
    place = rng.choice(("supermarket", "train station", "stadium", "zoo", "swimming pool", "cinema"))
    empty = spaces - cars
    q = (f"The car park at the {place} has {spaces} parking spaces. Right now {cars} cars are parked there. "
         f"How many parking spaces are empty?")
    return _solved(q, empty, f"There are {spaces} spaces and {cars} are taken, so "
                             f"{spaces} - {cars} = {empty} empty spaces.")


def _jug_cups(rng: random.Random) -> WorkedProblem:
    cup = rng.choice((100, 125, 150, 200, 250))
    cups = rng.randint(3, 8)
    jug = cup * cups
    drink = rng.choice(("lemonade", "orange juice", "iced tea", "apple juice", "milk", "water"))
    who = _name(rng)
    q = (f"{who} has a jug with {jug} millilitres of {drink}. Each glass holds {cup} millilitres. How many "
         f"glasses can {who} fill from the jug?")
    return _solved(q, cups, f"The jug holds {jug} millilitres and each glass takes {cup}, so "
                            f"{jug} ÷ {cup} = {cups} glasses.")


def _ribbon_pieces(rng: random.Random) -> WorkedProblem:
    piece = rng.randint(4, 15)
    pieces = rng.randint(3, 12)
    length = piece * pieces
    what = rng.choice(("a ribbon", "a piece of rope", "a roll of tape", "a strip of fabric", "a length of wire"))
    who = _name(rng)
    q = (f"{who} has {what} that is {length} centimetres long and cuts it into pieces that are each {piece} "
         f"centimetres long. How many pieces does {who} get?")
    return _solved(q, pieces, f"The length is {length} centimetres and each piece is {piece} centimetres, so "
                              f"{length} ÷ {piece} = {pieces} pieces.")


# --- two-step templates: two (at most three) operations, every intermediate a positive integer ---

def _egg_cartons_baking(rng: random.Random) -> WorkedProblem:
    who = _name(rng)
    cartons = rng.randint(2, 6)
    eggs = 12 * cartons
    used = rng.randint(3, eggs - 2)
    bake = rng.choice(("cakes", "omelettes", "pancakes", "muffins", "quiches", "custard tarts"))
    left = eggs - used
    q = (f"{who} buys {cartons} cartons of eggs. Each carton holds 12 eggs. {who} uses {used} eggs to make "
         f"{bake}. How many eggs are left?")
    return _solved(q, left, f"{who} has {cartons} × 12 = {eggs} eggs.",
                   f"After using {used}, {eggs} - {used} = {left} eggs are left.")


def _savings_goal(rng: random.Random) -> WorkedProblem:
    who = _name(rng)
    weekly, weeks = rng.randint(3, 15), rng.randint(2, 8)
    saved = weekly * weeks
    goal = saved + rng.randint(5, 60)
    item = rng.choice(("a bicycle", "a telescope", "a skateboard", "a keyboard", "a tent", "a pair of roller skates"))
    more = goal - saved
    q = (f"{who} wants to buy {item} that costs {goal} dollars. {who} saves {weekly} dollars every week for "
         f"{weeks} weeks. How many more dollars does {who} still need?")
    return _solved(q, more, f"{who} saves {weekly} × {weeks} = {saved} dollars.",
                   f"{who} still needs {goal} - {saved} = {more} dollars.")


def _recipe_scaled(rng: random.Random) -> WorkedProblem:
    flour, sugar = rng.randint(2, 6), rng.randint(1, 4)
    factor, word = rng.choice(((2, "doubles"), (3, "triples")))
    dish = rng.choice(("banana bread", "shortbread", "a sponge cake", "oat cookies", "scones", "a crumble"))
    who = _name(rng)
    cups = flour + sugar
    total = cups * factor
    q = (f"A recipe for {dish} needs {flour} cups of flour and {sugar} cups of sugar. {who} {word} the recipe. "
         f"How many cups of flour and sugar together does {who} need?")
    return _solved(q, total, f"One batch needs {flour} + {sugar} = {cups} cups.",
                   f"{who} {word} it, so {cups} × {factor} = {total} cups.")


def _laps(n: int) -> str:
    return "1 lap" if n == 1 else f"{n} laps"


def _bike_laps(rng: random.Random) -> WorkedProblem:
    who = _name(rng)
    loop = rng.randint(2, 6)
    sat, sun = rng.randint(1, 6), rng.randint(1, 6)
    place = rng.choice(("a lake", "a park", "a reservoir", "the old castle", "a forest"))
    laps = sat + sun
    total = laps * loop
    q = (f"A cycling path around {place} is {loop} kilometres long. {who} rides {_laps(sat)} on Saturday and "
         f"{_laps(sun)} on Sunday. How many kilometres does {who} ride over the weekend?")
    return _solved(q, total, f"{who} rides {sat} + {sun} = {laps} laps.",
                   f"Each lap is {loop} kilometres, so {laps} × {loop} = {total} kilometres.")


def _train_cars(rng: random.Random) -> WorkedProblem:
    cars, per_car = rng.randint(3, 9), rng.randint(8, 40)
    board = rng.randint(4, 35)
    town = rng.choice(_TOWNS)
    seated = cars * per_car
    total = seated + board
    q = (f"A train has {cars} cars, and each car carries {per_car} passengers. At the station in {town}, another "
         f"{board} passengers get on. How many passengers are on the train now?")
    return _solved(q, total, f"At first there are {cars} × {per_car} = {seated} passengers.",
                   f"After {board} get on, {seated} + {board} = {total} passengers.")


def _ticket_prices(rng: random.Random) -> WorkedProblem:
    adult_price = rng.randint(5, 12)
    child_price = rng.randint(2, adult_price - 1)
    adults, children = rng.randint(3, 25), rng.randint(3, 25)
    event = rng.choice(("school play", "puppet show", "magic show", "dance recital", "science fair", "choir concert"))
    adult_total, child_total = adults * adult_price, children * child_price
    total = adult_total + child_total
    q = (f"Tickets for the {event} cost {adult_price} dollars for adults and {child_price} dollars for children. "
         f"They sold {adults} adult tickets and {children} child tickets. How many dollars did the tickets bring in?")
    return _solved(q, total, f"Adult tickets brought {adults} × {adult_price} = {adult_total} dollars and child "
                             f"tickets brought {children} × {child_price} = {child_total} dollars.",
                   f"Together that is {adult_total} + {child_total} = {total} dollars.")


def _coin_stacks(rng: random.Random) -> WorkedProblem:
    who = _name(rng)
    stacks, loose = rng.randint(2, 15), rng.randint(1, 9)
    coins = rng.choice(("pennies", "dimes", "nickels", "coins", "tokens"))
    stacked = stacks * 10
    total = stacked + loose
    q = (f"{who} empties a jar of {coins} and counts them into stacks of 10. There are {stacks} full stacks and "
         f"{loose} {coins} left over. How many {coins} were in the jar?")
    return _solved(q, total, f"The stacks hold {stacks} × 10 = {stacked} {coins}.",
                   f"With the {loose} left over, {stacked} + {loose} = {total} {coins}.")


def _temperature_day(rng: random.Random) -> WorkedProblem:
    morning, rise = rng.randint(4, 18), rng.randint(3, 14)
    noon = morning + rise
    fall = rng.randint(2, noon - 1)
    town = rng.choice(_TOWNS)
    evening = noon - fall
    q = (f"In {town} it was {morning} degrees in the morning. The temperature rose {rise} degrees by the afternoon "
         f"and then fell {fall} degrees by the evening. What was the temperature in the evening?")
    return _solved(q, evening, f"In the afternoon it was {morning} + {rise} = {noon} degrees.",
                   f"In the evening it was {noon} - {fall} = {evening} degrees.")


def _library_shelves(rng: random.Random) -> WorkedProblem:
    shelves, per_shelf = rng.randint(2, 8), rng.randint(4, 12)
    shelved_later = shelves * per_shelf
    done = rng.randint(5, 40)
    returned = shelved_later + done
    who = _name(rng)
    q = (f"The library got {returned} returned books today. The librarian, {who}, put {done} of them back on the "
         f"shelves in the morning. In the afternoon the rest are shared equally among {shelves} shelves. How many "
         f"books go on each shelf?")
    return _solved(q, per_shelf, f"The rest is {returned} - {done} = {shelved_later} books.",
                   f"Shared among {shelves} shelves, {shelved_later} ÷ {shelves} = {per_shelf} books per shelf.")


def _trip_vans(rng: random.Random) -> WorkedProblem:
    seats = rng.randint(6, 12)
    vans = rng.randint(2, 8)
    people = seats * vans
    teachers = rng.randint(2, min(6, people - 10))
    students = people - teachers
    where = rng.choice(("the aquarium", "a farm", "the science museum", "a nature reserve", "the planetarium"))
    q = (f"On a class trip to {where} there are {students} students and {teachers} teachers. Each van holds "
         f"{seats} people, and every van is full. How many vans do they need?")
    return _solved(q, vans, f"There are {students} + {teachers} = {people} people.",
                   f"With {seats} in each van, {people} ÷ {seats} = {vans} vans.")


def _garden_bunches(rng: random.Random) -> WorkedProblem:
    who = _name(rng)
    bunch = rng.randint(3, 8)
    rows = rng.randint(2, 9)
    # choose plants per row so the total is a whole number of bunches
    per_row = bunch * rng.randint(1, 4)
    flowers = rng.choice(("tulips", "daffodils", "roses", "sunflowers", "lilies", "carnations"))
    total = rows * per_row
    bunches = total // bunch
    q = (f"{who}'s garden has {rows} rows of {flowers} with {per_row} {flowers} in each row. {who} picks all of "
         f"them and ties them into bunches of {bunch}. How many bunches does {who} make?")
    return _solved(q, bunches, f"There are {rows} × {per_row} = {total} {flowers}.",
                   f"In bunches of {bunch}, {total} ÷ {bunch} = {bunches} bunches.")


#: template id -> generator, in a fixed order. These are the training data of trained stages (the robust A's
#: ``arith_pairs``), and the stage hash holds the knob, not the text: any change here (a template's wording, its
#: order, even one appended, since items go round-robin) changes what ``arith_pairs: N`` means, so
#: ``tests/test_robust_data.py`` pins the digest of the first 400; change the data under a new knob value instead
TEMPLATES: dict[str, Callable[[random.Random], WorkedProblem]] = {
    # one-step
    "hall_chairs": _hall_chairs,
    "practice_week": _practice_week,
    "stairs_floors": _stairs_floors,
    "bakery_day": _bakery_day,
    "temperature_rise": _temperature_rise,
    "plant_growth": _plant_growth,
    "game_lead": _game_lead,
    "parking_lot": _parking_lot,
    "jug_cups": _jug_cups,
    "ribbon_pieces": _ribbon_pieces,
    # two-step
    "egg_cartons_baking": _egg_cartons_baking,
    "savings_goal": _savings_goal,
    "recipe_scaled": _recipe_scaled,
    "bike_laps": _bike_laps,
    "train_cars": _train_cars,
    "ticket_prices": _ticket_prices,
    "coin_stacks": _coin_stacks,
    "temperature_day": _temperature_day,
    "library_shelves": _library_shelves,
    "trip_vans": _trip_vans,
    "garden_bunches": _garden_bunches,
}


def worked_problems(n: int) -> list[tuple[str, WorkedProblem]]:
    """``n`` (id, problem) pairs, round-robin over :data:`TEMPLATES` in registry order.

    Item ``k`` of the template at position ``t`` comes from ``random.Random(SEED_BASE + 1000 * t + k)`` and has id
    ``f"{name}-{k}"``, so a prefix of a longer list is the shorter list and every machine gets the same items.
    """
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    names = list(TEMPLATES)
    counters = [0] * len(names)
    out: list[tuple[str, WorkedProblem]] = []
    for i in range(n):
        t = i % len(names)
        k = counters[t]
        counters[t] += 1
        name = names[t]
        out.append((f"{name}-{k}", TEMPLATES[name](random.Random(SEED_BASE + 1000 * t + k))))
    return out


__all__ = ["SEED_BASE", "TEMPLATES", "WorkedProblem", "worked_problems"]
