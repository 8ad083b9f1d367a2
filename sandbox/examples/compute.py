# A shop opens at 9 and closes at 17; how many hours a week if it opens 6 days, and solve
# x^2 - 5x + 6 = 0 for the quiz on the sign.
import sympy as sp

hours = (17 - 9) * 6
x = sp.symbols("x")
roots = sp.solve(sp.Eq(x**2 - 5 * x + 6, 0), x)
print(f"weekly hours: {hours}, roots: {roots}, ratio: {hours / 7:.2f}")
