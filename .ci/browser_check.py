"""The explorer in a real browser: JupyterLab driven by headless Chromium. Run All, check that every control renders and
that "all digits" shows in the digit dropdown, change the digit, press Generate, and check that the picture changes.

    apt-get install chromium chromium-driver && pip install selenium      # once (Debian's packages)
    python .ci/browser_check.py [--out DIR]                                # screenshots and timings in DIR

Exits 1, naming the check, if something a learner would see is wrong. Reports how long each Generate took, from the click
to the new picture; the explorer's own status line says how long the drawing itself took.
"""
import argparse, os, secrets, socket, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def start_lab(port: int, token: str, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, '-m', 'jupyter', 'lab', '--no-browser', '--allow-root', f'--port={port}', '--ip=127.0.0.1',
           f'--IdentityProvider.token={token}', f'--ServerApp.root_dir={ROOT / "nbs"}', '--ServerApp.disable_check_xsrf=True']
    proc = subprocess.Popen(cmd, stdout=open(log, 'w'), stderr=subprocess.STDOUT, cwd=ROOT / 'nbs')
    for _ in range(120):
        try:
            with socket.create_connection(('127.0.0.1', port), timeout=1): return proc
        except OSError: time.sleep(0.5)
    proc.kill(); raise SystemExit(f'JupyterLab did not start; see {log}')


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = '/usr/bin/chromium'
    for flag in ('--headless=new', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
                 '--disable-background-networking', '--disable-component-update', '--disable-sync',
                 '--window-size=1400,2000', f'--user-data-dir={tempfile.mkdtemp()}'):
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service('/usr/bin/chromedriver'), options=opts)


def wait(what, fn, timeout=300, every=0.25):
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            v = fn()
            if v: return v
        except Exception: pass
        time.sleep(every)
    raise TimeoutError(f'timed out waiting for {what}')


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out', default=tempfile.mkdtemp(prefix='browser_check_'), help='screenshots and the log go here')
    p.add_argument('--notebook', default='75_explorer.ipynb')
    args = p.parse_args(argv)
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select
    out = Path(args.out); out.mkdir(parents=True, exist_ok=True)
    port, token = free_port(), secrets.token_hex(16)
    lab = start_lab(port, token, out / 'jupyterlab.log')
    driver, failures, report = None, [], []
    def check(ok, what):
        report.append(('pass' if ok else 'FAIL', what)); print(('pass' if ok else 'FAIL'), what, flush=True)
        if not ok: failures.append(what)
    try:
        driver = browser()
        driver.get(f'http://127.0.0.1:{port}/lab/tree/{args.notebook}?token={token}')
        wait('the notebook', lambda: driver.find_elements(By.CSS_SELECTOR, '.jp-Notebook .jp-Cell'))
        wait('the kernel', lambda: 'Idle' in driver.find_element(By.CSS_SELECTOR, '.jp-Notebook-ExecutionIndicator, '
                                                                   '#jp-main-statusbar').get_attribute('innerHTML') or True)
        time.sleep(3)
        t0 = time.time()
        driver.find_element(By.XPATH, "//div[contains(@class,'lm-MenuBar-itemLabel') and text()='Run']").click()
        wait('the Run menu', lambda: driver.find_element(By.XPATH, "//div[contains(@class,'lm-Menu-itemLabel') and text()='Run All Cells']"),
             timeout=30).click()
        def finished():
            prompts = [e.text for e in driver.find_elements(By.CSS_SELECTOR, '.jp-CodeCell .jp-InputArea-prompt')]  # markdown has none
            return prompts and not any('*' in t for t in prompts) and all(t.strip() not in ('[ ]:', '') for t in prompts)
        wait('Run All to finish', finished, timeout=900, every=1)
        report.append(('info', f'Run All took {time.time() - t0:.0f} s'))
        errors = driver.find_elements(By.CSS_SELECTOR, "[data-mime-type='application/vnd.jupyter.stderr']")
        tracebacks = [e for e in errors if 'Traceback' in e.text or 'Error' in e.text]
        check(not tracebacks, 'Run All: no cell raised an error')
        selects = wait('the explorer controls', lambda: driver.find_elements(By.CSS_SELECTOR, '.widget-dropdown select'))
        sliders = driver.find_elements(By.CSS_SELECTOR, '.widget-slider, .widget-hslider')
        check(len(selects) >= 3 and len(sliders) >= 2, f'every control renders ({len(selects)} dropdowns, {len(sliders)} sliders)')
        model, digit, solver = selects[-3:]
        shown = Select(digit).first_selected_option.text if Select(digit).all_selected_options else ''
        check(shown == 'all digits', f'the digit dropdown shows "all digits" (it shows {shown!r})')
        status = lambda: driver.find_elements(By.CSS_SELECTOR, '.widget-label')[-1].text
        def picture():
            imgs = driver.find_elements(By.CSS_SELECTOR, '.jupyter-widgets-output-area img, .widget-output img')
            return imgs[-1].get_attribute('src') if imgs else None
        before = wait('the first picture', picture)
        driver.save_screenshot(str(out / 'explorer_before.png'))
        timings = []
        for choice in ('7', '3'):
            Select(digit).select_by_visible_text(choice)
            button = next(b for b in driver.find_elements(By.CSS_SELECTOR, 'button') if b.text.strip() == 'Generate')
            t0 = time.time()
            button.click()
            wait('the status to say it is drawing', lambda: 'drawing' in status() or picture() != before, timeout=30, every=0.05)
            after = wait('a new picture', lambda: (p := picture()) != before and 'drawn in' in status() and p, timeout=120, every=0.05)
            timings.append((time.time() - t0, status()))
            check(after != before, f'digit {choice}: the picture changes after Generate')
            before = after
        driver.save_screenshot(str(out / 'explorer_after.png'))
        for secs, st in timings: report.append(('info', f'Generate: {secs:.1f} s from the click to the new picture ({st})'))
    except Exception as e:
        failures.append(f'{type(e).__name__}: {e}'.splitlines()[0]); print('FAIL', failures[-1])
        if driver: driver.save_screenshot(str(out / 'failure.png'))
    finally:
        if driver: driver.quit()
        lab.terminate(); lab.wait(timeout=30)
    (out / 'browser_check.log').write_text('\n'.join(f'{a}: {b}' for a, b in report) + '\n')
    print('\n'.join(f'{a}: {b}' for a, b in report if a == 'info'))
    print(f'screenshots and log in {out}')
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
