"""Keep every notebook's Colab badge and Colab install cell in step with settings.ini (user, repo, branch).

    python .ci/sync_notebooks.py          # rewrite badges and install cells from settings.ini
    python .ci/sync_notebooks.py --check  # exit 1, naming the notebooks, if any is out of step

Also checks the course skeleton: a title cell with a one-line `>` summary, the badge in its own markdown cell, and the
Colab-only install cell as the first code cell after them.
"""
import configparser, re, sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
cfg = configparser.ConfigParser()
cfg.read(ROOT / 'settings.ini')
USER, REPO, BRANCH = (cfg['DEFAULT'][k] for k in ('user', 'repo', 'branch'))
NBS = ROOT / cfg['DEFAULT'].get('nbs_path', 'nbs')


def badge(name: str) -> str:
    url = f'https://colab.research.google.com/github/{USER}/{REPO}/blob/{BRANCH}/nbs/{name}'
    return f'[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({url})'


INSTALL = f'''# In Google Colab (and only there), install fm_mnist from its repository first.
import sys, subprocess
if 'google.colab' in sys.modules:
    subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', 'git+https://github.com/{USER}/{REPO}.git'], check=True)'''


def problems(path: Path, fix: bool) -> list[str]:
    nb = nbformat.read(path, as_version=4)
    cells = [c for c in nb.cells if not c.source.startswith('#| default_exp')]
    found = []
    title = cells[0] if cells else None
    if title is None or title.cell_type != 'markdown' or not re.match(r'# .+\n\n> .+', title.source):
        found.append('first cell must be a "# Title" with a "> one-line summary"')
    i_badge = next((i for i, c in enumerate(cells) if c.cell_type == 'markdown' and 'colab-badge.svg' in c.source), None)
    if i_badge is None: found.append('no Colab badge cell')
    elif cells[i_badge].source != badge(path.name):
        if fix: cells[i_badge].source = badge(path.name)
        else: found.append('Colab badge does not match settings.ini')
    first_code = next((c for c in cells if c.cell_type == 'code'), None)
    if first_code is None or "'google.colab' in sys.modules" not in first_code.source:
        found.append('first code cell must be the Colab-only install cell')
    elif first_code.source != INSTALL:
        if fix: first_code.source = INSTALL
        else: found.append('Colab install cell does not match settings.ini')
    if fix: nbformat.write(nb, path)
    return found


def main(argv):
    check = '--check' in argv
    bad = {p.name: probs for p in sorted(NBS.glob('*.ipynb')) if (probs := problems(p, fix=not check))}
    for name, probs in bad.items(): print(f'{name}: ' + '; '.join(probs))
    if bad and check: print('run `python .ci/sync_notebooks.py` after changing settings.ini')
    return 1 if bad else 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
