# Kept empty: `invoke` loads ../tasks.py as the root collection (see its docstring).
