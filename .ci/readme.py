"""Write README.md from nbs/index.ipynb (nbdev_readme needs Quarto, which this project does not require).

    python .ci/readme.py          # rewrite README.md
    python .ci/readme.py --check  # exit 1 if README.md is out of step with nbs/index.ipynb

Markdown cells are copied (relative image links are made relative to the repository root); code cells become python
blocks followed by their text output; exported, hidden and Colab-install cells are left out.
"""
import posixpath, re, sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
SKIP = ('#| default_exp', '#| export', '#| hide')


def render() -> str:
    nb = nbformat.read(ROOT / 'nbs' / 'index.ipynb', as_version=4)
    parts = ['<!-- Generated from nbs/index.ipynb by .ci/readme.py: edit the notebook, then run `python .ci/readme.py`. -->']
    for cell in nb.cells:
        src = cell.source.strip()
        if cell.cell_type == 'markdown':
            parts.append(re.sub(r'\]\((?!https?:|#)([^)]+)\)', lambda m: f'](' + posixpath.normpath(f'nbs/{m.group(1)}') + ')', src))
        elif src.startswith(SKIP) or "'google.colab' in sys.modules" in src: continue
        else:
            parts.append(f'```python\n{src}\n```')
            text = ''.join(o.get('text', '') for o in cell.get('outputs', []) if o.output_type == 'stream' and o.get('name') == 'stdout')
            text += ''.join(o['data']['text/plain'] for o in cell.get('outputs', [])
                            if o.output_type == 'execute_result' and 'text/plain' in o.get('data', {}))
            if text.strip(): parts.append(f'```\n{text.rstrip()}\n```')
    return '\n\n'.join(parts) + '\n'


def main(argv) -> int:
    readme, text = ROOT / 'README.md', render()
    if '--check' in argv:
        if readme.read_text(encoding='utf-8') != text:
            print('README.md is out of step with nbs/index.ipynb: run `python .ci/readme.py` and commit')
            return 1
        return 0
    readme.write_text(text, encoding='utf-8')
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
