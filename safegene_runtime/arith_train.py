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

Multi-step problems: GSM8K's problems need three to six steps, these templates one or two, so a model trained only on
them never practises carrying a result through a longer chain. :data:`MULTI_STEP_TEMPLATES` (with
:func:`multi_step_problems`, seeded from :data:`MULTI_SEED_BASE`) holds three- and four-step problems whose solutions
state one equation per sentence; it is a separate registry so that the data of :data:`TEMPLATES`, which trained
stages are pinned to, stay exactly as they are. Its situations, too, were chosen blind to ``arith-val``'s items.
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
    return _round_robin(TEMPLATES, SEED_BASE, n)


def _round_robin(registry: dict[str, Callable[[random.Random], WorkedProblem]], seed_base: int,
                 n: int) -> list[tuple[str, WorkedProblem]]:
    """``n`` (id, problem) pairs, round-robin over ``registry``: item ``k`` of the template at position ``t`` from
    ``random.Random(seed_base + 1000 * t + k)``, id ``f"{name}-{k}"``."""
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    names = list(registry)
    return [(f"{names[i % len(names)]}-{i // len(names)}",
             registry[names[i % len(names)]](random.Random(seed_base + 1000 * (i % len(names)) + i // len(names))))
            for i in range(n)]


# --- multi-step templates: three or four operations, one equation per sentence, GSM8K-like length ---
#
# A separate registry (:data:`MULTI_STEP_TEMPLATES`), so that appending here leaves :data:`TEMPLATES` and the pinned
# digest of :func:`worked_problems` untouched.

#: base of every multi-step item's seed: 1,000,000 above :data:`SEED_BASE`, so no multi-step item shares a stream
#: with a one- or two-step item (those use ``SEED_BASE + 1000 * t + k`` with ``t`` and ``k`` far below 1000)
MULTI_SEED_BASE = 8_000_000


def _cap(text: str) -> str:
    """``text`` with its first letter upper-cased, for a phrase (``the second graders``) that starts a sentence."""
    return text[0].upper() + text[1:]


_STAND_GOODS = ("jars of honey", "jars of plum jam", "bags of apples", "bunches of carrots", "baskets of strawberries",
                "pumpkins", "bags of sweetcorn", "bottles of apple juice", "bunches of flowers", "heads of lettuce")


def _farm_stand(rng: random.Random) -> WorkedProblem:
    # price × count twice, a sum, then a cost taken off
    who, town = _name(rng), rng.choice(_TOWNS)
    first, second = rng.sample(_STAND_GOODS, 2)
    p1, p2 = rng.randint(3, 9), rng.randint(2, 8)
    n1, n2 = rng.randint(4, 25), rng.randint(4, 25)
    x, y = n1 * p1, n2 * p2
    takings = x + y
    rent = rng.randint(5, min(40, takings - 1))
    kept = takings - rent
    day = rng.choice(("Saturday", "Sunday", "market day", "a sunny Friday"))
    fee = rng.choice(("renting the stall", "the stall fee", "hiring the market pitch"))
    q = rng.choice((
        f"{who} runs a farm stand outside {town}. On {day}, {who} sold {n1} {first} at {p1} dollars each and {n2} "
        f"{second} at {p2} dollars each. {_cap(fee)} cost {rent} dollars. How many dollars did {who} keep after "
        f"paying for the stall?",
        f"At the {town} farmers' market, {who} sells {first} for {p1} dollars each and {second} for {p2} dollars "
        f"each. On {day}, {who} sold {n1} {first} and {n2} {second}, and paid {rent} dollars for {fee}. How many "
        f"dollars did {who} have left from the day's sales?",
    ))
    return _solved(q, kept, f"The {first} brought in {n1} × {p1} = {x} dollars.",
                   f"The {second} brought in {n2} × {p2} = {y} dollars.",
                   f"Together that is {x} + {y} = {takings} dollars.",
                   f"After paying {rent} dollars, {takings} - {rent} = {kept} dollars are left.")


def _water_tank(rng: random.Random) -> WorkedProblem:
    # two rates added, times minutes, plus what was already there
    who = _name(rng)
    r1, r2 = rng.randint(3, 12), rng.randint(2, 10)
    minutes, start = rng.randint(5, 30), rng.randint(10, 90)
    tank = rng.choice(("paddling pool", "garden pond", "water trough on a farm", "hot tub", "fish pond", "rain tank"))
    rate = r1 + r2
    added = rate * minutes
    total = start + added
    q = rng.choice((
        f"A {tank} already holds {start} litres of water. {who} fills it with two hoses at once: one pours in {r1} "
        f"litres a minute and the other {r2} litres a minute. How many litres of water are in the {tank} after "
        f"{minutes} minutes?",
        f"{who} is topping up a {tank} that has {start} litres of water in it. A big hose adds {r1} litres every "
        f"minute and a small hose adds {r2} litres every minute, and both run for {minutes} minutes. How many "
        f"litres does the {tank} hold then?",
    ))
    return _solved(q, total, f"Together the hoses pour in {r1} + {r2} = {rate} litres a minute.",
                   f"In {minutes} minutes they add {rate} × {minutes} = {added} litres.",
                   f"With the water already there, {start} + {added} = {total} litres.")


def _factory_shift(rng: random.Random) -> WorkedProblem:
    # workers × rate, × hours, minus the faulty ones
    workers, rate, hours = rng.randint(3, 8), rng.randint(4, 12), rng.randint(3, 8)
    thing = rng.choice(("toy cars", "desk lamps", "birdhouses", "kettles", "phone cases", "lanterns", "wooden puzzles",
                        "bicycle bells"))
    town = rng.choice(_TOWNS)
    per_hour = workers * rate
    made = per_hour * hours
    faulty = rng.randint(2, min(30, made - 1))
    good = made - faulty
    q = rng.choice((
        f"At a factory in {town}, {workers} workers each put together {rate} {thing} an hour. Their shift lasts "
        f"{hours} hours. At the end of the shift, {faulty} of the {thing} fail the quality check. How many {thing} "
        f"pass the check?",
        f"On the early shift of a {town} workshop, each of the {workers} workers makes {rate} {thing} every hour "
        f"for {hours} hours. The inspector rejects {faulty} {thing}. How many good {thing} did the shift make?",
    ))
    return _solved(q, good, f"Together the workers make {workers} × {rate} = {per_hour} {thing} an hour.",
                   f"Over {hours} hours they make {per_hour} × {hours} = {made} {thing}.",
                   f"Without the {faulty} faulty ones, {made} - {faulty} = {good} {thing} pass.")


def _marathon_plan(rng: random.Random) -> WorkedProblem:
    # "3 more than twice": × 2, +, then a week's runs × days and a total
    who = _name(rng)
    unit = rng.choice(("kilometres", "miles"))
    short, days, extra = rng.randint(3, 12), rng.randint(3, 5), rng.randint(2, 6)
    race = rng.choice(("a marathon", "a half marathon", "a trail race", "the city marathon", "a charity run"))
    twice = short * 2
    long_run = twice + extra
    weekdays = short * days
    total = weekdays + long_run
    q = (f"{who} is training for {race}. This week {who} runs {short} {unit} on each of {days} weekday mornings, and "
         f"on Sunday goes on a long run that is {extra} {unit} more than twice a weekday run. How many {unit} does "
         f"{who} run this week?")
    return _solved(q, total, f"Twice a weekday run is {short} × 2 = {twice} {unit}.",
                   f"The long run is {twice} + {extra} = {long_run} {unit}.",
                   f"On weekdays {who} runs {short} × {days} = {weekdays} {unit}.",
                   f"In all, {weekdays} + {long_run} = {total} {unit}.")


_ZOO = (("penguins", "fish", "sea lions"), ("otters", "fish", "pelicans"), ("meerkats", "crickets", "lizards"),
        ("lemurs", "pieces of fruit", "fruit bats"), ("giraffes", "acacia branches", "okapis"),
        ("flamingos", "scoops of shrimp pellets", "ducks"))


def _zoo_feeding(rng: random.Random) -> WorkedProblem:
    # animals × portion, × meals a day, plus another enclosure's share
    animal, food, other = rng.choice(_ZOO)
    count, portion, meals = rng.randint(4, 20), rng.randint(2, 5), rng.randint(2, 3)
    others = rng.randint(10, 60)
    town, keeper = rng.choice(_TOWNS), _name(rng)
    per_meal = count * portion
    per_day = per_meal * meals
    total = per_day + others
    q = rng.choice((
        f"At the {town} zoo, each of the {count} {animal} eats {portion} {food} at every meal, and the keepers feed "
        f"them {meals} times a day. The {other} get {others} {food} a day altogether. How many {food} does the zoo "
        f"need each day for these animals?",
        f"Zookeeper {keeper} feeds {count} {animal} {meals} times a day, giving each one {portion} {food} at every "
        f"feed. {keeper} also puts out {others} {food} a day for the {other}. How many {food} does {keeper} use "
        f"in a day?",
    ))
    return _solved(q, total, f"At one meal the {animal} eat {count} × {portion} = {per_meal} {food}.",
                   f"Over {meals} meals that is {per_meal} × {meals} = {per_day} {food}.",
                   f"With the {others} for the {other}, {per_day} + {others} = {total} {food}.")


def _carpenter_boards(rng: random.Random) -> WorkedProblem:
    # legs needed, their length, what is left of the board, then strips cut from it
    who = _name(rng)
    furniture, legs = rng.choice((("stools", 3), ("tables", 4), ("benches", 4), ("plant stands", 3),
                                  ("footstools", 4)))
    count, leg = rng.randint(2, 3), rng.randint(20, 40)
    strip, strips = rng.randint(5, 12), rng.randint(2, 9)
    wood = rng.choice(("pine board", "beech plank", "length of timber", "cedar board", "walnut plank"))
    n_legs = count * legs
    used = n_legs * leg
    left = strip * strips
    length = used + left
    q = (f"A carpenter, {who}, has a {wood} that is {length} centimetres long. {who} cuts {legs} legs, each {leg} "
         f"centimetres long, for each of {count} small {furniture}, and then cuts the rest of the board into strips "
         f"that are {strip} centimetres long. How many strips does {who} get?")
    return _solved(q, strips, f"{who} needs {count} × {legs} = {n_legs} legs.",
                   f"The legs use {n_legs} × {leg} = {used} centimetres.",
                   f"That leaves {length} - {used} = {left} centimetres.",
                   f"In strips of {strip} centimetres, {left} ÷ {strip} = {strips} strips.")


def _game_points(rng: random.Random) -> WorkedProblem:
    # items × points, plus a bonus, doubled, minus what is spent
    who = _name(rng)
    items = rng.choice(("stars", "gems", "golden keys", "crystals", "coins", "mushrooms", "feathers"))
    game = rng.choice(("a puzzle game", "a platform game", "a racing game", "a space game",
                       "an underwater adventure game"))
    found, worth, bonus = rng.randint(5, 30), rng.randint(2, 9), rng.randint(10, 50)
    upgrade = rng.choice(("helmet", "jetpack", "map", "costume", "pair of boots"))
    points = found * worth
    level = points + bonus
    doubled = level * 2
    spend = rng.randint(5, min(100, doubled - 1))
    left = doubled - spend
    q = (f"In {game}, {who} collects {found} {items} worth {worth} points each and gets a bonus of {bonus} points "
         f"for finishing the level. A power-up then doubles {who}'s score, and {who} spends {spend} points on a new "
         f"{upgrade}. How many points does {who} have left?")
    return _solved(q, left, f"The {items} are worth {found} × {worth} = {points} points.",
                   f"With the bonus, {points} + {bonus} = {level} points.",
                   f"The power-up doubles it to {level} × 2 = {doubled} points.",
                   f"After spending, {doubled} - {spend} = {left} points are left.")


_GRADES = ("the first graders", "the second graders", "the third graders", "the fourth graders",
           "the fifth graders", "the sixth graders")


def _recycling_drive(rng: random.Random) -> WorkedProblem:
    # "twice as many", then "N fewer/more than", then a total of three groups
    g1, g2, g3 = rng.sample(_GRADES, 3)
    items = rng.choice(("cans", "plastic bottles", "glass jars", "juice cartons", "old batteries", "bottle caps"))
    school = rng.choice(_TOWNS)
    first, diff = rng.randint(12, 60), rng.randint(3, 20)
    second = first * 2
    more = rng.random() < 0.5
    third = second + diff if more else second - diff
    pair = first + second
    total = pair + third
    q = (f"For the {school} school's recycling drive, {g1} collected {first} {items}. {_cap(g2)} collected twice as "
         f"many as {g1}, and {g3} collected {diff} {'more' if more else 'fewer'} than {g2}. How many {items} did "
         f"the three grades collect altogether?")
    step3 = (f"{_cap(g3)} collected {second} + {diff} = {third} {items}." if more
             else f"{_cap(g3)} collected {second} - {diff} = {third} {items}.")
    return _solved(q, total, f"{_cap(g2)} collected {first} × 2 = {second} {items}.", step3,
                   f"{_cap(g1)} and {g2} collected {first} + {second} = {pair} {items}.",
                   f"With {g3}, {pair} + {third} = {total} {items}.")


def _hotel_rooms(rng: random.Random) -> WorkedProblem:
    # floors × rooms, minus the empty ones, divided among housekeepers
    floors, per_floor = rng.randint(3, 9), rng.randint(8, 20)
    rooms = floors * per_floor
    rate = rng.randint(4, 9)
    staff = rng.randint(2, min(15, (rooms - 1) // rate))
    to_clean = staff * rate
    empty = rooms - to_clean
    hotel = rng.choice(("Grand Hotel", "Seaview Inn", "Hotel Miramar", "Riverside Lodge", "Station Hotel",
                        "Alpine Guesthouse"))
    town = rng.choice(_TOWNS)
    q = (f"The {hotel} in {town} has {floors} floors with {per_floor} rooms on each floor. Last night {empty} rooms "
         f"were empty, and every other room must be cleaned this morning. Each housekeeper cleans {rate} rooms in a "
         f"morning. How many housekeepers are needed?")
    return _solved(q, staff, f"The hotel has {floors} × {per_floor} = {rooms} rooms.",
                   f"The rooms to clean are {rooms} - {empty} = {to_clean}.",
                   f"At {rate} rooms each, {to_clean} ÷ {rate} = {staff} housekeepers.")


_ORCHARD = (("apple", "apples", "bottle of juice", "bottles of juice"),
            ("pear", "pears", "jar of pear jam", "jars of jam"),
            ("plum", "plums", "jar of plum jam", "jars of jam"),
            ("orange", "oranges", "jug of juice", "jugs of juice"),
            ("quince", "quinces", "jar of quince jelly", "jars of jelly"),
            ("cherry", "cherries", "jar of cherry sauce", "jars of sauce"))


def _orchard_harvest(rng: random.Random) -> WorkedProblem:
    # rows × trees, × fruit per tree, minus bruised fruit, ÷ fruit per jar or bottle
    tree, fruit, unit, units = rng.choice(_ORCHARD)
    rows, per_row = rng.randint(3, 8), rng.randint(4, 10)
    trees = rows * per_row
    per_tree = rng.randint(5, max(5, min(15, 900 // trees)))
    picked = trees * per_tree
    per_unit = rng.randint(4, 8)
    # bruised fruit makes the rest an exact number of jars or bottles
    rem = picked % per_unit
    bruised = rem + per_unit * rng.randint(0 if rem else 1, 3)
    good = picked - bruised
    made = good // per_unit
    town = rng.choice(_TOWNS)
    q = (f"An orchard near {town} has {rows} rows of {tree} trees with {per_row} trees in each row. At harvest each "
         f"tree gives {per_tree} {fruit}. The pickers throw away {bruised} bruised {fruit}, and every {per_unit} of "
         f"the rest make one {unit}. How many {units} does the orchard make?")
    return _solved(q, made, f"There are {rows} × {per_row} = {trees} trees.",
                   f"They give {trees} × {per_tree} = {picked} {fruit}.",
                   f"Without the bruised ones, {picked} - {bruised} = {good} {fruit} are left.",
                   f"Every {per_unit} make one, so {good} ÷ {per_unit} = {made} {units}.")


def _sponsored_swim(rng: random.Random) -> WorkedProblem:
    # "N more than", a total for two swimmers, × dollars per length
    a, b = rng.sample(_NAMES, 2)
    first, extra, pay = rng.randint(10, 40), rng.randint(2, 9), rng.randint(2, 5)
    cause = rng.choice(("the animal shelter", "a new playground", "the school library", "the local hospital",
                        "a food bank"))
    sponsor = rng.choice(("A local shop", "Their swimming coach", "A bakery in town", "The parents' association"))
    second = first + extra
    lengths = first + second
    money = lengths * pay
    town = rng.choice(_TOWNS)
    q = (f"{a} and {b} swim lengths of the {town} pool in a sponsored swim to raise money for {cause}. {a} swims "
         f"{first} lengths and {b} swims {extra} more lengths than {a}. {sponsor} gives {pay} dollars for every "
         f"length. How many dollars do they raise?")
    return _solved(q, money, f"{b} swims {first} + {extra} = {second} lengths.",
                   f"Together they swim {first} + {second} = {lengths} lengths.",
                   f"At {pay} dollars a length, {lengths} × {pay} = {money} dollars.")


def _club_membership(rng: random.Random) -> WorkedProblem:
    # a free month, monthly fees, a sign-up fee less a coupon, a total
    who = _name(rng)
    club = rng.choice(("climbing gym", "swimming club", "tennis club", "dance studio", "judo club", "rowing club"))
    months, fee = rng.randint(3, 12), rng.randint(12, 45)
    sign_up = rng.randint(15, 50)
    coupon = rng.randint(5, min(30, sign_up - 1))
    paid = months - 1
    fees = paid * fee
    sign = sign_up - coupon
    total = fees + sign
    q = (f"{who} joins a {club} for {months} months. The monthly fee is {fee} dollars, but the first month is free. "
         f"There is also a sign-up fee of {sign_up} dollars, and {who} has a coupon for {coupon} dollars off the "
         f"sign-up fee. How many dollars does {who} pay in all?")
    return _solved(q, total, f"{who} pays for {months} - 1 = {paid} months.",
                   f"The monthly fees come to {paid} × {fee} = {fees} dollars.",
                   f"After the coupon, the sign-up fee is {sign_up} - {coupon} = {sign} dollars.",
                   f"Altogether {fees} + {sign} = {total} dollars.")


_JOBS = (("paint", "fence panels", "around the school field"), ("varnish", "benches", "in the park"),
         ("wash", "windows", "at the community centre"), ("weed", "flower beds", "in the town square"),
         ("repaint", "lockers", "in the sports hall"), ("scrub", "picnic tables", "by the lake"))


def _volunteer_jobs(rng: random.Random) -> WorkedProblem:
    # two rate × time products, their sum, and what is still left to do
    a, b = rng.sample(_NAMES, 2)
    verb, things, where = rng.choice(_JOBS)
    r1, h1, r2, h2 = rng.randint(2, 6), rng.randint(2, 5), rng.randint(2, 6), rng.randint(2, 5)
    x, y = r1 * h1, r2 * h2
    done = x + y
    left = rng.randint(3, 25)
    total = done + left
    town = rng.choice(_TOWNS)
    q = (f"Volunteers in {town} plan to {verb} all {total} {things} {where}. {a} can {verb} {r1} {things} an hour "
         f"and works for {h1} hours. {b} can {verb} {r2} {things} an hour and works for {h2} hours. How many "
         f"{things} are still left to {verb}?")
    return _solved(q, left, f"{a} does {r1} × {h1} = {x} {things}.",
                   f"{b} does {r2} × {h2} = {y} {things}.",
                   f"Together they do {x} + {y} = {done} {things}.",
                   f"That leaves {total} - {done} = {left} {things}.")


_CRAFTS = (("knits", "knit", "rows of a scarf"), ("folds", "fold", "paper cranes"),
           ("decorates", "decorate", "candles"), ("sews", "sew", "quilt squares"),
           ("paints", "paint", "clay pots"), ("weaves", "weave", "baskets"), ("carves", "carve", "wooden spoons"))


def _craft_comparison(rng: random.Random) -> WorkedProblem:
    # a comparison between two people: two rate × time products and their difference
    a, b = rng.sample(_NAMES, 2)
    verbs, verb, things = rng.choice(_CRAFTS)
    r1, h1, r2, h2 = rng.randint(3, 12), rng.randint(2, 6), rng.randint(3, 12), rng.randint(2, 6)
    while r1 * h1 == r2 * h2:
        h2 = rng.randint(2, 6)
    x, y = r1 * h1, r2 * h2
    (win, wx), (lose, lx) = sorted(((a, x), (b, y)), key=lambda p: -p[1])
    diff = wx - lx
    event = rng.choice(("charity fair", "school fete", "spring market", "holiday craft sale"))
    town = rng.choice(_TOWNS)
    q = (f"For the {town} {event}, {a} {verbs} {r1} {things} an hour for {h1} hours, and {b} {verbs} {r2} "
         f"{things} an hour for {h2} hours. How many more {things} does {win} {verb} than {lose}?")
    return _solved(q, diff, f"{a} {verbs} {r1} × {h1} = {x} {things}.",
                   f"{b} {verbs} {r2} × {h2} = {y} {things}.",
                   f"{win} {verbs} {wx} - {lx} = {diff} more.")


def _printer_paper(rng: random.Random) -> WorkedProblem:
    # leftovers after several uses: pages × students, plus extra sheets, taken from the tray
    who = _name(rng)
    pages, students, extra = rng.randint(2, 4), rng.randint(15, 30), rng.randint(5, 30)
    place = rng.choice(("the school office", "the library", "a small office", "the community centre",
                        "the staff room"))
    poster = rng.choice(("posters for the school concert", "a sign-up sheet", "flyers for a bake sale",
                         "copies of the lunch menu", "a class newsletter"))
    worksheets = pages * students
    used = worksheets + extra
    tray = used + rng.randint(5, 150)
    left = tray - used
    q = (f"The printer in {place} has {tray} sheets of paper in it. {who} prints a worksheet of {pages} pages for "
         f"each of the {students} students in a class, one page on each sheet, and then prints {extra} sheets of "
         f"{poster}. How many sheets are left in the printer?")
    return _solved(q, left, f"The worksheets use {pages} × {students} = {worksheets} sheets.",
                   f"With the other printing, {worksheets} + {extra} = {used} sheets are used.",
                   f"That leaves {tray} - {used} = {left} sheets.")


def _pizza_orders(rng: random.Random) -> WorkedProblem:
    # rate × hours, "half of", then the part not delivered
    who = _name(rng)
    per_hour, hours = 2 * rng.randint(3, 15), rng.randint(3, 8)
    kind = rng.choice(("margherita", "pepperoni", "mushroom", "vegetable", "ham and pineapple", "spinach"))
    day = rng.choice(("Friday", "Saturday", "a busy Sunday", "the night of the big match"))
    baked = per_hour * hours
    half = baked // 2
    delivered = rng.randint(2, half - 1)
    eaten_in = half - delivered
    q = (f"The oven at {who}'s pizza restaurant bakes {per_hour} pizzas an hour, and on {day} it runs for {hours} "
         f"hours. Half of the pizzas are {kind}. Of the {kind} pizzas, {delivered} are delivered and the rest are "
         f"eaten in the restaurant. How many {kind} pizzas are eaten in the restaurant?")
    return _solved(q, eaten_in, f"The oven bakes {per_hour} × {hours} = {baked} pizzas.",
                   f"Half of them is {baked} ÷ 2 = {half} {kind} pizzas.",
                   f"Without the delivered ones, {half} - {delivered} = {eaten_in} pizzas.")


def _hiking_trip(rng: random.Random) -> WorkedProblem:
    # totals over several days: "N more than", "half of", and two sums
    first, extra = rng.randint(6, 20), rng.randint(2, 8)
    if (first + extra) % 2:
        extra += 1  # the second day must be even so that half of it is whole
    second = first + extra
    third = second // 2
    both = first + second
    total = both + third
    group = rng.choice((f"{_name(rng)}'s hiking club", f"A scout troop from {rng.choice(_TOWNS)}",
                        f"{_name(rng)}'s family", "A group of birdwatchers"))
    trail = rng.choice(("the coast path", "a mountain trail", "the river trail", "a forest trail",
                        "an old pilgrim way"))
    q = (f"{group} walks {trail} over three days. On the first day they walk {first} kilometres. On the second day "
         f"they walk {extra} kilometres more than on the first day, and on the third day they walk half as far as on "
         f"the second day. How many kilometres do they walk in all?")
    return _solved(q, total, f"On the second day they walk {first} + {extra} = {second} kilometres.",
                   f"On the third day they walk {second} ÷ 2 = {third} kilometres.",
                   f"The first two days make {first} + {second} = {both} kilometres.",
                   f"All three days make {both} + {third} = {total} kilometres.")


#: template id -> generator for the three- and four-step problems, in a fixed order. Separate from
#: :data:`TEMPLATES` so that its pinned data stay as they are; the same rule holds here once a stage trains on
#: these: appending a template changes what ``multi_step_problems(n)`` returns (items go round-robin)
MULTI_STEP_TEMPLATES: dict[str, Callable[[random.Random], WorkedProblem]] = {
    "farm_stand": _farm_stand,
    "water_tank": _water_tank,
    "factory_shift": _factory_shift,
    "marathon_plan": _marathon_plan,
    "zoo_feeding": _zoo_feeding,
    "carpenter_boards": _carpenter_boards,
    "game_points": _game_points,
    "recycling_drive": _recycling_drive,
    "hotel_rooms": _hotel_rooms,
    "orchard_harvest": _orchard_harvest,
    "sponsored_swim": _sponsored_swim,
    "club_membership": _club_membership,
    "volunteer_jobs": _volunteer_jobs,
    "craft_comparison": _craft_comparison,
    "printer_paper": _printer_paper,
    "pizza_orders": _pizza_orders,
    "hiking_trip": _hiking_trip,
}


def multi_step_problems(n: int) -> list[tuple[str, WorkedProblem]]:
    """``n`` (id, problem) pairs of three- and four-step problems, round-robin over :data:`MULTI_STEP_TEMPLATES`.

    Works as :func:`worked_problems` does: item ``k`` of the template at position ``t`` comes from
    ``random.Random(MULTI_SEED_BASE + 1000 * t + k)`` and has id ``f"{name}-{k}"``, so a prefix of a longer list is
    the shorter list and every machine gets the same items.
    """
    return _round_robin(MULTI_STEP_TEMPLATES, MULTI_SEED_BASE, n)


__all__ = ["MULTI_SEED_BASE", "MULTI_STEP_TEMPLATES", "SEED_BASE", "TEMPLATES", "WorkedProblem",
           "multi_step_problems", "worked_problems"]
