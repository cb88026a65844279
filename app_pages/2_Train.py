"""Train: choose the settings, start a run (optionally with its λ = 0 twin), watch it live."""
from __future__ import annotations

import streamlit as st

from engine.config import runs_root, train_page_start
from engine.data.plan import Words, plan_config
from engine.errors import UserError
from engine.learners import LEARNERS, build_learner
from engine.models import BACKBONES, head_start
from engine.runs import NAME_MAX_CHARS
from engine.services.training import new_run_dir, start_runs
from ui.common import current_run, data_overrides, presenter, set_current_run
from ui.live import live_view

_gradient = [cls.display_name for cls in LEARNERS.values() if cls.adapts_by_steps]
GRADIENT_LEARNERS = ", ".join(_gradient[:-1]) + " and " + _gradient[-1]  # "MAML, Meta-SGD and Reptile"
# the form's labels for the settings a memory refusal names (engine.train.budget)
FORM_WORDS = {"meta_batch": "Meta-batch", "ways": "N (ways)", "shots": "K (shots)", "queries": "Q (queries)",
              "ext_batch": "External batch", "lam": "λ (discriminator weight)"}
HEAD_START_MEASURED = ("On 6-class uploads of Omniglot alphabets it never saw (6 images a class), after 60 steps, "
                       "5 seeds: 78 % vs 60 % from scratch on 5-way 1-shot tasks of new characters; on the "
                       "upload's own held-out images 92 % vs 88 %, within noise (± 8 points). "
                       "`python -m engine bench headstart`, BENCHMARKS.md.")


def defaults():
    """The demo's recipe (engine.config.train_page_start) with the Data page's choice on top: settings
    that train well on a CPU."""
    try:
        return train_page_start().with_overrides(**data_overrides())
    except (UserError, TypeError) as e:
        st.warning(f"The data chosen on the Data page cannot be used ({e}); using the built-in glyphs.")
        return train_page_start()


def settings_form(base) -> tuple[dict, bool, str] | None:
    """The settings as TrainConfig fields, the twin choice and the run's name, once Start is pressed (else None)."""
    with st.expander("Settings for a new run", expanded=current_run() is None), \
            st.form("train_settings", border=False):
        name = st.text_input("Name of the run (optional)", key="train_name", max_chars=NAME_MAX_CHARS,
                             placeholder="e.g. my letters, first try", help="shown on the Runs page, which can change it")
        c1, c2, c3, c4 = st.columns(4)
        backbones = list(BACKBONES)
        learners = list(LEARNERS)
        backbone = c1.selectbox("Backbone", backbones, index=backbones.index(base.backbone), key="train_backbone",
                                help="the concept generator G: conv4 is quick on a CPU, resnet12 is bigger")
        learner = c2.selectbox("Learner", learners, index=learners.index(base.learner), key="train_learner",
                               format_func=lambda n: LEARNERS[n].display_name, help="the meta-learner M")
        steps = c3.number_input("Steps", min_value=1, max_value=1_000_000, value=base.steps, step=100,
                                key="train_steps", help="optimizer steps (the demo trains 300, a few minutes on CPU)")
        lam = c4.number_input("λ (discriminator weight)", min_value=0.0, value=float(base.lam), step=0.1,
                              format="%.2f", key="train_lam",
                              help="weight of the discrimination loss; 0 is the vanilla meta-learner")
        c1, c2, c3, c4, c5 = st.columns(5)
        ways = c1.number_input("N (ways)", min_value=1, max_value=100, value=base.ways, key="train_ways",
                               help="classes per task")
        shots = c2.number_input("K (shots)", min_value=1, max_value=50, value=base.shots, key="train_shots",
                                help="labelled examples per class in a task's support set")
        queries = c3.number_input("Q (queries)", min_value=1, max_value=100, value=base.queries, key="train_queries",
                                  help="query examples per class, scored for the meta loss")
        meta_batch = c4.number_input("Meta-batch", min_value=1, max_value=64, value=base.meta_batch,
                                     key="train_meta_batch", help="tasks per step")
        ext_batch = c5.number_input("External batch", min_value=0, max_value=1024, value=base.ext_batch,
                                    key="train_ext_batch", help="external images per step for the discriminator")
        c1, c2, c3, c4 = st.columns(4)
        lr = c1.number_input("Learning rate", min_value=0.0, max_value=1.0, value=float(base.lr), step=1e-4,
                             format="%.5f", key="train_lr", help="Adam, shared by G, D and M")
        inner_lr = c2.number_input("Inner learning rate", min_value=0.0, max_value=10.0, value=float(base.inner_lr),
                                   step=0.05, format="%.3f", key="train_inner_lr",
                                   help=f"the task learner's step size ({GRADIENT_LEARNERS} only)")
        inner_steps = c3.number_input("Inner steps", min_value=0, max_value=50, value=base.inner_steps,
                                      key="train_inner_steps", help=f"adaptation steps per task ({GRADIENT_LEARNERS} only)")
        seed = c4.number_input("Seed", min_value=0, max_value=2**31 - 1, value=base.seed, key="train_seed")
        twin = st.checkbox("Also train the λ = 0 twin", key="train_twin",
                           help="a second run with λ = 0 and every other setting the same, beside this one, so the "
                                "curves compare DEML with the vanilla meta-learner (the two share the CPU cores, "
                                "so each trains at about half speed)")
        # grayscale uploads: start from the built-in generator ("auto": engine.models.head_start decides it fits)
        built_in = (st.checkbox("Start from the built-in generator (trained on Omniglot characters)", value=True,
                                key="train_head_start", help="a conv4 trained on Omniglot alphabets (assets/README.md);"
                                " color sets and other generator settings train from scratch")
                    if head_start.offered(base.dataset) else None)
        if built_in is not None:
            st.caption(HEAD_START_MEASURED)
        start = st.form_submit_button("Start", type="primary", key="train_start")
    if not start:
        return None
    return dict(backbone=backbone, learner=learner, steps=int(steps), lam=float(lam), ways=int(ways),
                shots=int(shots), queries=int(queries), meta_batch=int(meta_batch), ext_batch=int(ext_batch),
                lr=float(lr), inner_lr=float(inner_lr), inner_steps=int(inner_steps), seed=int(seed),
                **({} if built_in is None else {"head_start": "auto" if built_in else "off"})), twin, name


def start(base, settings: dict, twin: bool, name: str) -> None:
    try:
        cfg = base.with_overrides(**settings)  # TrainConfig checks every value and says what is wrong
        build_learner(cfg.learner, cfg.concept_dim, cfg.learner_config())  # learner-specific checks
        # the plan's rule checks what the form holds, in the form's words (engine.data.plan)
        cfg, plan = plan_config(cfg, explicit=set(settings) | set(data_overrides()), words=Words(FORM_WORDS))
        out = new_run_dir(runs_root(), cfg.learner)
        start_runs(cfg, out, twin=twin, words=FORM_WORDS, plan=plan, name=name.strip() or None)
    except UserError as e:
        st.error(str(e))
        return
    set_current_run(out)


st.title("Train")
current_run()  # checks the link's ?run= first: one outside the runs folder is dropped, with a notice at the top
show_presenter = presenter()
if not show_presenter:
    base = defaults()
    chosen = data_overrides()
    data = chosen.get("dataset")
    st.caption(f"Data: `{data}` (chosen on the Data page, {base.ways}-way {base.shots}-shot {base.queries}-query)"
               if data else "Data: built-in glyphs (choose other data, or upload your own, on the Data page)")
    submitted = settings_form(base)
    if submitted is not None:
        start(base, *submitted)

live_view(current_run(), key="live", presenter=show_presenter,
          empty_hint="Choose the settings and press **Start** to train; the run appears here and updates "
                     "every second.")
