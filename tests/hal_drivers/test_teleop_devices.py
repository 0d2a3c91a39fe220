"""Teleop devices: the keyboard through a real pseudo-terminal, evdev through a virtual uinput device."""

import os
import pty
import random
import sys
import termios
import time

import numpy as np
import pytest

from hal_drivers import registry
from harness.waits import wait_for
from shared.errors import ConfigError

# --------------------------------------------------------------------------- keyboard


@pytest.fixture
def pty_pair():
    master, slave = pty.openpty()
    yield master, os.ttyname(slave), slave
    for fd in (master, slave):
        try:
            os.close(fd)
        except OSError:
            pass


def _keyboard(path, mode="hold", **opts):
    kb = registry.create("keyboard", {"tty": path, **opts}, section="teleop")
    kb.start(4, mode)
    return kb


def _collect(dev, until, timeout=5.0):
    """Read until ``until(events, reward)`` holds; returns everything read (events are consumed by reads)."""
    events, reward = [], 0.0

    def done():
        nonlocal reward
        cmd = dev.read({})
        events.extend(cmd.events)
        reward += cmd.reward
        return until(events, reward)

    wait_for(done, timeout, "teleop events", every=0.01)
    return events, reward


def test_keyboard_moves_and_holds_takeover_then_expires(pty_pair):
    master, path, slave = pty_pair
    kb = _keyboard(path, hold_s=1.0)
    try:
        cmd = kb.read({})
        assert not cmd.takeover and cmd.action.tolist() == [0, 0, 0, 0]
        t0 = time.monotonic()
        os.write(master, b"w")
        cmd = wait_for(lambda: (c := kb.read({})).action[0] == 1.0 and c, 5, "w to drive action 0", every=0.01)
        assert cmd.takeover and cmd.action.tolist() == [1, 0, 0, 0]
        os.write(master, b"d")  # another axis adds; the first stays for hold_s after its press
        wait_for(lambda: kb.read({}).action[1] == -1.0, 5, "d to drive action 1 negative", every=0.01)
        os.write(master, b"s")  # the opposite key replaces w at once
        wait_for(lambda: kb.read({}).action[0] == -1.0, 5, "s to reverse action 0", every=0.01)
        # no key-up on a terminal: everything fades hold_s after the last press, take-over too
        wait_for(lambda: not (c := kb.read({})).takeover and not c.action.any(), 5, "the hold to expire", every=0.01)
        assert time.monotonic() - t0 >= 1.0
        os.write(master, b" ")  # the take-over key alone holds without moving
        cmd = wait_for(lambda: (c := kb.read({})).takeover and c, 5, "space to take over", every=0.01)
        assert not cmd.action.any()
    finally:
        kb.close()


def test_keyboard_arrow_keys_and_custom_map(pty_pair):
    master, path, _ = pty_pair
    kb = _keyboard(path, axes=[{"source": "up", "action": 2, "scale": 0.5}, {"source": "J", "action": 0, "scale": -1}],
                   takeover_button="t", move_takes_over=False, hold_s=2.0)
    try:
        os.write(master, b"\x1b[A")
        cmd = wait_for(lambda: (c := kb.read({})).action[2] == 0.5 and c, 5, "the up arrow", every=0.01)
        assert not cmd.takeover  # move_takes_over off
        os.write(master, b"Jt")
        cmd = wait_for(lambda: (c := kb.read({})).takeover and c, 5, "t to take over", every=0.01)
        assert cmd.action[0] == -1.0
        assert kb.read({}).events == ()
    finally:
        kb.close()


def test_keyboard_toggle_mode(pty_pair):
    master, path, _ = pty_pair
    kb = _keyboard(path, "toggle", hold_s=0.5)
    try:
        os.write(master, b" ")
        wait_for(lambda: kb.read({}).takeover, 5, "take-over on", every=0.01)
        time.sleep(0.7)  # well past hold_s: a toggle does not fade
        os.write(master, b"w")  # movement keys do not switch it
        wait_for(lambda: kb.read({}).action[0] == 1.0, 5, "w", every=0.01)
        assert kb.read({}).takeover
        os.write(master, b" ")
        wait_for(lambda: not kb.read({}).takeover, 5, "take-over off", every=0.01)
    finally:
        kb.close()


def test_keyboard_events_and_rewards_are_consumed_once(pty_pair):
    master, path, _ = pty_pair
    kb = _keyboard(path, reward_value=0.5)
    try:
        os.write(master, b"\r\x7fx++")  # enter, backspace, x, +, +
        events, reward = _collect(kb, lambda ev, r: len(ev) == 3 and r == 1.0)
        assert events == ["success", "failure", "reset"] and reward == 1.0
        cmd = kb.read({})
        assert cmd.events == () and cmd.reward == 0.0 and not cmd.takeover  # buttons do not take over
        os.write(master, b"\n")  # a terminal that sends NL for enter
        events, _ = _collect(kb, lambda ev, r: len(ev) == 1)
        assert events == ["success"]
    finally:
        kb.close()


def test_keyboard_sets_cbreak_and_restores_the_terminal(pty_pair):
    master, path, slave = pty_pair
    before = termios.tcgetattr(slave)
    assert before[3] & termios.ECHO and before[3] & termios.ICANON
    kb = _keyboard(path)
    during = termios.tcgetattr(slave)
    assert not during[3] & (termios.ECHO | termios.ICANON) and during[3] & termios.ISIG  # Ctrl-C still works
    kb.close()
    assert termios.tcgetattr(slave) == before
    kb.close()  # idempotent


def test_keyboard_survives_a_hang_up_and_still_restores(pty_pair):
    master, path, slave = pty_pair
    kb = _keyboard(path, hold_s=5.0)
    os.write(master, b"w")
    wait_for(lambda: kb.read({}).takeover, 5, "w", every=0.01)
    os.close(master)  # the ssh session drops: the reader sees EOF/EIO and stops
    wait_for(lambda: not kb._reader.alive, 5, "the reader to stop")
    cmd = kb.read({})  # reading after a hang-up never raises, and the held key is dropped
    assert not cmd.takeover and not cmd.action.any()
    kb.close()  # restoring a hung-up terminal is logged, not raised


def test_keyboard_config_errors(tmp_path, pty_pair):
    _, path, _ = pty_pair
    with pytest.raises(ConfigError, match=r"teleop\.options\.bogus: unknown key"):
        registry.create("keyboard", {"bogus": 1}, section="teleop")
    with pytest.raises(ConfigError, match=r"teleop\.options\.takeover_button"):
        registry.create("keyboard", {"takeover_button": "ctrl-alt-q"}, section="teleop")
    with pytest.raises(ConfigError, match=r"teleop\.options\.axes\[0\]\.source: 'f1' is not a key"):
        registry.create("keyboard", {"axes": [{"source": "f1", "action": 0}]}, section="teleop")
    with pytest.raises(ConfigError, match=r"teleop\.options\.success_button: key 'space' is already the takeover key"):
        registry.create("keyboard", {"success_button": " "}, section="teleop")
    with pytest.raises(ConfigError, match=r"teleop\.options\.axes\[0\]\.source: key 'x' is already the reset key"):
        registry.create("keyboard", {"axes": [{"source": "x", "action": 0}]}, section="teleop")
    kb = registry.create("keyboard", {"tty": path, "axes": [{"source": "w", "action": 5}]}, section="teleop")
    with pytest.raises(ConfigError, match=r"teleop\.options\.axes\[0\]: action 5 does not exist"):
        kb.start(4)
    missing = registry.create("keyboard", {"tty": str(tmp_path / "nope")}, section="teleop")
    with pytest.raises(ConfigError, match=r"teleop\.options\.tty: cannot open .*nope"):
        missing.start(4)
    plain = tmp_path / "file"
    plain.write_text("")
    notty = registry.create("keyboard", {"tty": str(plain)}, section="teleop")
    with pytest.raises(ConfigError, match=r"teleop\.options\.tty: .* is not a terminal"):
        notty.start(4)
    notty.close()
    d = registry.describe("keyboard", {"tty": path})
    assert d.kind.value == "teleop" and d.driver == "keyboard" and d.identity == f"tty:{path}"


# --------------------------------------------------------------------------- evdev: gamepad, SpaceMouse

UINPUT_MISSING = not os.access("/dev/uinput", os.R_OK | os.W_OK)
needs_uinput = pytest.mark.skipif(
    UINPUT_MISSING, reason="needs /dev/uinput read-write to create a virtual input device (absent here: no uinput "
    "module in this container); runs on a robot computer with `modprobe uinput` and the evdev extra")


@pytest.fixture
def virtual_pad():
    evdev = pytest.importorskip("evdev", reason="python-evdev not installed: pip install 'fleetrl[teleop]'")
    ec = evdev.ecodes
    stick = evdev.AbsInfo(value=0, min=-32768, max=32767, fuzz=0, flat=0, resolution=0)
    trigger = evdev.AbsInfo(value=0, min=0, max=255, fuzz=0, flat=0, resolution=0)
    caps = {
        ec.EV_ABS: [(ec.ABS_X, stick), (ec.ABS_Y, stick), (ec.ABS_RX, stick), (ec.ABS_RY, stick),
                    (ec.ABS_Z, trigger), (ec.ABS_RZ, trigger)],
        ec.EV_KEY: [ec.BTN_SOUTH, ec.BTN_EAST, ec.BTN_WEST, ec.BTN_NORTH, ec.BTN_TL, ec.BTN_TR],
    }
    name = f"fleetrl test pad {random.randrange(1 << 30)}"
    ui = evdev.UInput(caps, name=name)
    yield ui, name, ec
    ui.close()


@needs_uinput
def test_gamepad_through_a_virtual_uinput_device(virtual_pad):
    ui, name, ec = virtual_pad
    pad = registry.create("gamepad", {"name": name}, section="teleop")
    pad.start(4, "hold")
    try:
        assert pad.describe().extra["device"] == name

        def send(*events):
            for t, c, v in events:
                ui.write(t, c, v)
            ui.syn()

        send((ec.EV_ABS, ec.ABS_X, 32767), (ec.EV_ABS, ec.ABS_Y, -32768), (ec.EV_ABS, ec.ABS_RZ, 255))
        cmd = wait_for(lambda: (c := pad.read({})).action[3] == 1.0 and c, 5, "the right trigger", every=0.01)
        assert np.allclose(cmd.action, [1.0, 1.0, 0.0, 1.0], atol=1e-3) and not cmd.takeover  # stick up = +1
        send((ec.EV_KEY, ec.BTN_TR, 1))
        wait_for(lambda: pad.read({}).takeover, 5, "BTN_TR down: take-over", every=0.01)
        time.sleep(0.2)
        assert pad.read({}).takeover  # held: no fading, the device sends the release
        send((ec.EV_KEY, ec.BTN_TR, 0), (ec.EV_ABS, ec.ABS_X, 0), (ec.EV_ABS, ec.ABS_RZ, 0))
        wait_for(lambda: not (c := pad.read({})).takeover and c.action[0] == 0 and c.action[3] == 0, 5, "release",
                 every=0.01)
        send((ec.EV_KEY, ec.BTN_SOUTH, 1))
        send((ec.EV_KEY, ec.BTN_SOUTH, 0), (ec.EV_KEY, ec.BTN_NORTH, 1))
        send((ec.EV_KEY, ec.BTN_NORTH, 0), (ec.EV_KEY, ec.BTN_EAST, 1), (ec.EV_KEY, ec.BTN_WEST, 1))
        events, reward = _collect(pad, lambda ev, r: len(ev) == 3)
        assert events == ["success", "failure", "reset"] and reward == 1.0
        assert pad.read({}).events == ()
    finally:
        pad.close()


@needs_uinput
def test_gamepad_toggle_and_custom_map(virtual_pad):
    ui, name, ec = virtual_pad
    pad = registry.create("gamepad", {"name": name, "takeover_button": "BTN_TL", "axes": [
        {"source": "ABS_RX", "action": 0, "scale": -0.5}, {"source": "BTN_TR", "action": 1}]}, section="teleop")
    pad.start(2, "toggle")
    try:
        for code, v in ((ec.BTN_TL, 1), (ec.BTN_TL, 0)):
            ui.write(ec.EV_KEY, code, v)
            ui.syn()
        wait_for(lambda: pad.read({}).takeover, 5, "toggle on", every=0.01)
        ui.write(ec.EV_ABS, ec.ABS_RX, 32767)
        ui.write(ec.EV_KEY, ec.BTN_TR, 1)
        ui.syn()
        cmd = wait_for(lambda: (c := pad.read({})).action[1] == 1.0 and c, 5, "BTN_TR as an axis", every=0.01)
        assert cmd.takeover and abs(cmd.action[0] + 0.5) < 1e-3
        for code, v in ((ec.BTN_TL, 1), (ec.BTN_TL, 0)):
            ui.write(ec.EV_KEY, code, v)
            ui.syn()
        wait_for(lambda: not pad.read({}).takeover, 5, "toggle off", every=0.01)
    finally:
        pad.close()


@needs_uinput
def test_spacemouse_relative_axes_through_uinput():
    evdev = pytest.importorskip("evdev")
    ec = evdev.ecodes
    name = f"fleetrl test 3Dconnexion SpaceMouse {random.randrange(1 << 30)}"
    ui = evdev.UInput({ec.EV_REL: [ec.REL_X, ec.REL_Y, ec.REL_Z], ec.EV_KEY: [ec.BTN_0, ec.BTN_1]}, name=name)
    sm = registry.create("spacemouse", {"name": name, "rel_range": 350, "rel_hold_s": 1.0}, section="teleop")
    sm.start(4)
    try:
        ui.write(ec.EV_KEY, ec.BTN_0, 1)
        ui.write(ec.EV_REL, ec.REL_X, 175)
        ui.write(ec.EV_REL, ec.REL_Z, -700)
        ui.syn()
        cmd = wait_for(lambda: (c := sm.read({})).action[0] > 0 and c, 5, "REL_X", every=0.01)
        assert cmd.takeover and np.allclose(cmd.action, [0.5, 0.0, 1.0, 0.0], atol=1e-3)
        wait_for(lambda: not sm.read({}).action.any(), 5, "relative axes to fade", every=0.01)
        assert sm.read({}).takeover  # BTN_0 still down
    finally:
        sm.close()
        ui.close()


class _StandInDevice:
    """What EventDecoder asks of an evdev.InputDevice (no /dev/input here); the events themselves are real
    evdev.InputEvent objects, as the kernel would deliver them."""

    def __init__(self, evdev, absinfo, down=()):
        self.name, self._absinfo, self._down = "stand-in", absinfo, list(down)

    def capabilities(self, absinfo=True):
        return {3: list(self._absinfo.items())}

    def absinfo(self, code):
        return self._absinfo[code]

    def active_keys(self):
        return self._down


def test_evdev_decoder_normalises_and_tracks_buttons():
    evdev = pytest.importorskip("evdev")
    from hal_drivers.teleop.evdev_device import EventDecoder, EvdevOptions, Gamepad
    from hal_drivers.teleop.state import InputState

    ec = evdev.ecodes
    dev = _StandInDevice(evdev, {
        ec.ABS_X: evdev.AbsInfo(128, 0, 255, 0, 0, 0), ec.ABS_Y: evdev.AbsInfo(128, 0, 255, 0, 0, 0),
        ec.ABS_RY: evdev.AbsInfo(0, -32768, 32767, 0, 0, 0), ec.ABS_RZ: evdev.AbsInfo(0, 0, 1023, 0, 0, 0),
        ec.ABS_Z: evdev.AbsInfo(0, 0, 1023, 0, 0, 0)}, down=[ec.BTN_TR])
    pad = Gamepad(EvdevOptions())
    axes, buttons = pad._codes(evdev)
    state = InputState("hold")
    dec = EventDecoder(evdev, dev, axes, buttons, pad.unipolar, EvdevOptions(), state)
    dec.resync()
    cmd = state.command(pad.axes, 4)
    assert cmd.takeover and not cmd.action.any()  # held at start; centred sticks inside the deadzone, triggers at 0

    def ev(t, c, v):
        return evdev.InputEvent(0, 0, t, c, v)

    dec.handle([ev(ec.EV_ABS, ec.ABS_X, 0), ev(ec.EV_ABS, ec.ABS_RZ, 1023), ev(ec.EV_KEY, ec.BTN_TR, 0),
                ev(ec.EV_KEY, ec.BTN_SOUTH, 1), ev(ec.EV_KEY, ec.BTN_SOUTH, 2), ev(ec.EV_KEY, ec.BTN_SOUTH, 0),
                ev(ec.EV_KEY, ec.BTN_NORTH, 1), ev(ec.EV_SYN, ec.SYN_REPORT, 0)], time.monotonic())
    cmd = state.command(pad.axes, 4)
    assert cmd.action.tolist() == [-1.0, 0.0, 0.0, 1.0] and not cmd.takeover
    assert cmd.events == ("success",) and cmd.reward == 1.0  # autorepeat (value 2) is not a second press
    # the kernel dropped events: ignore until the next report, then re-read the device's state
    dev._down = [ec.BTN_TR]
    dec.handle([ev(ec.EV_SYN, ec.SYN_DROPPED, 0), ev(ec.EV_KEY, ec.BTN_EAST, 1), ev(ec.EV_SYN, ec.SYN_REPORT, 0)],
               time.monotonic())
    cmd = state.command(pad.axes, 4)
    assert cmd.takeover and cmd.events == () and cmd.action[0] == 0.0  # ABS_X re-read as centred


def test_evdev_config_errors(tmp_path, monkeypatch):
    pytest.importorskip("evdev")
    with pytest.raises(ConfigError, match=r"teleop\.options\.path: .*event99 does not exist; plug the gamepad in"):
        registry.create("gamepad", {"path": "/dev/input/event99"}, section="teleop").start(4)
    plain = tmp_path / "event0"
    plain.write_text("")
    with pytest.raises(ConfigError, match=r"teleop\.options\.path: .* is not an input device"):
        registry.create("spacemouse", {"path": str(plain)}, section="teleop").start(4)
    if not os.path.isdir("/dev/input"):  # nothing to find here: both lookups name what to plug in
        with pytest.raises(ConfigError, match=r"teleop\.options\.name: no input device whose name contains 'Xbox'"):
            registry.create("gamepad", {"name": "Xbox"}, section="teleop").start(4)
        with pytest.raises(ConfigError, match=r"teleop\.device: no input device that looks like a spacemouse"):
            registry.create("spacemouse", {}, section="teleop").start(4)
    with pytest.raises(ConfigError, match=r"teleop\.options\.axes\[1\]\.source: 'ABS_NOPE' is not an evdev"):
        registry.create("gamepad", {"axes": [{"source": "ABS_X", "action": 0}, {"source": "ABS_NOPE", "action": 1}]},
                        section="teleop").start(4)
    with pytest.raises(ConfigError, match=r"teleop\.options\.success_button: 'ABS_X' is not an evdev button"):
        registry.create("gamepad", {"success_button": "ABS_X"}, section="teleop").start(4)
    with pytest.raises(ConfigError, match=r"teleop\.options\.reset_button: BTN_A is already the success_button"):
        registry.create("gamepad", {"reset_button": "BTN_A"}, section="teleop").start(4)  # BTN_A is BTN_SOUTH
    with pytest.raises(ConfigError, match=r"teleop\.options\.axes\[0\]: action 4 does not exist"):
        registry.create("gamepad", {"axes": [{"source": "ABS_X", "action": 4}]}, section="teleop").start(4)
    with pytest.raises(ConfigError, match=r"teleop\.options\.path: set path or name, not both"):
        registry.create("gamepad", {"path": "/dev/input/event0", "name": "pad"}, section="teleop")
    with pytest.raises(ConfigError, match=r"teleop\.options\.rel_range"):
        registry.create("spacemouse", {"rel_range": 0}, section="teleop")
    monkeypatch.setitem(sys.modules, "evdev", None)  # the extra is not installed
    with pytest.raises(ConfigError, match=r"teleop\.device: .*needs python-evdev: pip install 'fleetrl\[teleop\]'"):
        registry.create("gamepad", {}, section="teleop").start(4)
    d = registry.describe("spacemouse", {"name": "SpaceMouse Wireless"}, name="mouse")
    assert (d.name, d.driver, d.identity) == ("mouse", "spacemouse", "name:SpaceMouse Wireless")


class _FailingDevice(_StandInDevice):
    """A stand-in gamepad on a real pipe whose read fails with an error that is not ENODEV (EIO: a USB hub reset)."""

    def __init__(self, evdev, absinfo, down=()):
        super().__init__(evdev, absinfo, down)
        self.fd, self._w = os.pipe()
        self.path, self.closed = "/dev/input/stand-in", False

    def read(self):
        raise OSError(5, "Input/output error")

    def close(self):
        self.closed = True
        for fd in (self.fd, self._w):
            os.close(fd)


def test_a_device_failing_while_takeover_is_held_hands_control_back():
    """The reader thread dying (EIO, a decoder bug) must drop a held take-over and the stick values, which
    otherwise stay valid forever: the robot would keep executing the human's last command."""
    evdev = pytest.importorskip("evdev")
    ec = evdev.ecodes
    dev = _FailingDevice(evdev, {ec.ABS_X: evdev.AbsInfo(255, 0, 255, 0, 0, 0)}, down=[ec.BTN_TR])
    pad = registry.create("gamepad", {}, section="teleop")
    pad._open = lambda _evdev: dev
    pad.start(4)
    try:
        cmd = pad.read({})
        assert cmd.takeover and cmd.action[0] == 1.0  # held, stick full right
        os.write(dev._w, b"x")  # readable: the read fails
        wait_for(lambda: not pad._reader.alive, 5, "the reader to stop")
        cmd = pad.read({})
        assert not cmd.takeover and not cmd.action.any()
    finally:
        pad.close()
    assert dev.closed


def test_fd_reader_calls_on_lost_only_when_it_ends_by_itself():
    from hal_drivers.teleop.reader import FdReader

    r, w = os.pipe()
    lost = []
    reader = FdReader(r, lambda: 1 / 0, "t", on_lost=lambda: lost.append(1))  # a decoder bug
    reader.start()
    os.write(w, b"x")
    wait_for(lambda: not reader.alive, 5, "the reader to stop")
    assert lost == [1] and isinstance(reader.error, ZeroDivisionError)
    reader.stop()
    r2, w2 = os.pipe()
    stopped = FdReader(r2, lambda: True, "t", on_lost=lambda: lost.append(2))
    stopped.start()
    stopped.stop()  # the owner closing: it drops its input itself
    assert not stopped.alive and lost == [1]
    for fd in (r, w, r2, w2):
        os.close(fd)


@pytest.mark.parametrize("opts, key", [({"reward_value": float("inf")}, "reward_value"),
                                       ({"axes": [{"source": "w", "action": 0, "scale": float("nan")}]},
                                        r"axes\.0\.scale")])
def test_teleop_numbers_must_be_finite(opts, key):
    """TOML has inf and nan; a non-finite label or scale is a config error, not a NaN in human_reward."""
    with pytest.raises(ConfigError, match=rf"teleop\.options\.{key}: .*finite"):
        registry.create("keyboard", opts, section="teleop")
